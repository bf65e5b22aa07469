"""Plumbing shared by the experiment scripts: options, the output folder, tables in and out.

The scripts are thin layers over `spectrax.analyses`; nothing here computes a statistic. Each
script writes into a new `--out` folder (refused if it exists, published atomically so a crashed
run leaves nothing under that name) and prints its tables as Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from spectrax.run.streaming import parse_layers
from spectrax.io import CheckpointError
from spectrax.run.store import atomic_output_dir
from spectrax.analyses.tables import format_number as fmt
from spectrax.analyses.tables import to_markdown
from spectrax.report.tables import write_csv

__all__ = [
    "add_common_options",
    "add_config_options",
    "checkpoint_labels",
    "fmt",
    "markdown",
    "output_folder",
    "parse_layers",
    "read_csv",
    "run_main",
    "write_table",
]

# What a user can get wrong (a missing checkpoint, an existing --out, a bad layer list): reported
# in one line with exit status 2, as the `spectrax` command does, instead of a traceback.
USER_ERRORS = (CheckpointError, FileExistsError, ValueError)


def add_common_options(parser: argparse.ArgumentParser, *, draws: int = 16) -> None:
    """`--out`, `--null-draws`, `--seed`, `--layers`, `--quiet`: what every script accepts."""
    parser.add_argument("--out", required=True, help="new folder for the CSV results (refused if it exists)")
    parser.add_argument("--null-draws", type=int, default=draws,
                        help=f"Monte Carlo draws per Gaussian null (default {draws}; >= 2)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the nulls (default 0)")
    parser.add_argument("--layers", default=None, help="layers to analyze, e.g. 0,4-7 (default all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _number_list(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return parse


def add_config_options(parser: argparse.ArgumentParser, config: type, helps: Mapping[str, str] | None = None) -> None:
    """One `--field-name` per field of the dataclass `config`, its default the field's (a tuple
    field takes comma-separated numbers), so `config(**options)` reads the parsed values back.
    `helps` adds a description per field; each help ends with the default."""
    helps = dict(helps or {})
    for field in dataclasses.fields(config):
        default = field.default
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, tuple):
            kind = type(default[0]) if default else float
            text = ",".join(str(v) for v in default)
            parser.add_argument(flag, type=_number_list(kind), default=default,
                                help=f"{helps.pop(field.name, 'comma-separated')} (default {text})")
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{helps.pop(field.name, '')} (default {default})")
        else:
            parser.add_argument(flag, type=type(default), default=default,
                                help=f"{helps.pop(field.name, '')} (default {default})".strip())
    if helps:
        raise TypeError(f"help for fields {config.__name__} does not have: {', '.join(sorted(helps))}")


@contextlib.contextmanager
def output_folder(out: str, checkpoints: Sequence[str]) -> Iterator[str]:
    """A temporary folder that becomes `out` when the block succeeds.

    Refuses an existing `out` (FileExistsError) and an `out` inside any of the checkpoints
    (ValueError) before any work starts.
    """
    with atomic_output_dir(out, checkpoints=checkpoints) as tmp:
        yield tmp


def checkpoint_labels(paths: Sequence[str]) -> list[str]:
    """Folder names as table labels, made unique (`name`, `name-2`, ...) when two coincide."""
    labels: list[str] = []
    for path in paths:
        base = os.path.basename(os.path.normpath(os.fspath(path))) or "checkpoint"
        label, n = base, 1
        while label in labels:
            n += 1
            label = f"{base}-{n}"
        labels.append(label)
    return labels


def read_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A CSV written by `spectrax.report.tables.write_csv` back as columns: numeric columns as
    float64 (empty cells -> NaN), others as object arrays of strings."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    table: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        cells = [r[j] for r in body]
        try:
            table[name] = np.array([float(c) if c != "" else np.nan for c in cells], np.float64)
        except ValueError:
            table[name] = np.array(cells, dtype=object)
    return table


def write_table(table: Mapping[str, np.ndarray], folder: str, name: str) -> str:
    """Write `table` as `<folder>/<name>.csv` (full float precision); returns the path."""
    path = os.path.join(folder, f"{name}.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_csv(table, path)
    return path


def markdown(title: str, table: Mapping[str, Sequence], columns: Sequence[str] | None = None,
             note: str | None = None) -> str:
    """`### title`, the table (cells pre-formatted as strings or numbers) and an optional note."""
    text = [f"### {title}", "", to_markdown({c: np.asarray(v, dtype=object) for c, v in table.items()},
                                           columns, digits=4)]
    if note:
        text += ["", note]
    return "\n".join(text) + "\n"


def run_main(name: str, body) -> int:
    """Run `body()`; a user error becomes one line on stderr and exit status 2."""
    try:
        return body()
    except USER_ERRORS as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
