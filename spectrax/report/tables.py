"""Column tables (`spectrax.analyses.tables`) written as CSV and JSON files."""

from __future__ import annotations

import csv
import json
import os

from spectrax.analyses.tables import Table, json_value

__all__ = ["write_csv", "write_json"]


def write_csv(table: Table, path: str | os.PathLike) -> None:
    columns = list(table)
    rows = len(next(iter(table.values()))) if table else 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(rows):
            writer.writerow(["" if json_value(table[c][i]) is None else json_value(table[c][i]) for c in columns])


def write_json(table: Table, path: str | os.PathLike) -> None:
    """A list of row objects; NaN becomes null."""
    columns = list(table)
    rows = len(next(iter(table.values()))) if table else 0
    with open(path, "w", encoding="utf-8") as f:
        json.dump([{c: json_value(table[c][i]) for c in columns} for i in range(rows)], f, indent=1)
