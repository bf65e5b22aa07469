"""Tables as plain column dicts: `{column: 1-D array}` -> CSV, JSON and Markdown."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["Table", "write_csv", "write_json", "to_markdown", "concat", "json_value", "format_number", "short_list"]

Table = Mapping[str, np.ndarray]


def json_value(x) -> object:
    """A table cell or summary value as JSON has it: str, int, float, None for NaN/None, and
    "inf"/"-inf" for infinities (which JSON cannot hold)."""
    if isinstance(x, (str, np.str_)):
        return str(x)
    if x is None:
        return None
    if isinstance(x, (np.integer, int)):
        return int(x)
    x = float(x)
    if math.isnan(x):
        return None
    return str(x) if math.isinf(x) else x


def format_number(x, digits: int = 4) -> str:
    """A value for a Markdown cell: `digits` significant digits, "n/a" for NaN/None."""
    x = json_value(x)
    if x is None:
        return "n/a"
    return x if isinstance(x, str) else str(x) if isinstance(x, int) else f"{x:.{digits}g}"


def concat(tables: Sequence[Table]) -> dict[str, np.ndarray]:
    """Row-wise concatenation of tables with the same columns."""
    return {k: np.concatenate([np.asarray(t[k]) for t in tables]) for k in tables[0]}


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


def to_markdown(table: Table, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    columns = list(columns or table)
    rows = len(table[columns[0]])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_number(table[c][i], digits) for c in columns) + " |" for i in range(rows)]
    return "\n".join(lines)


def short_list(items, limit: int = 3) -> str:
    """`a, b, c and 4 more`: a list that keeps an error or report line short, however long it is."""
    items = [str(x) for x in items]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
