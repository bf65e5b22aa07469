"""Column tables, `{column: 1-D array}`: joining them, their cells as JSON and Markdown text, and
as pandas DataFrames.

Pure functions with no file I/O, so that analyses can describe their report sections and the
report and run layers can write them (`spectrax.report.tables` writes CSV and JSON files; a
DataFrame writes Parquet: `to_pandas(table).to_parquet(path)`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["ColumnTable", "Table", "concat", "format_number", "format_percentile", "json_value", "list_markdown",
           "short_list", "to_markdown", "to_pandas"]

Table = Mapping[str, np.ndarray]


def to_pandas(table: Table):
    """`table` as a `pandas.DataFrame`, one column per entry in order (text columns stay text,
    NaN stays NaN). pandas is the optional `pandas` extra, imported here; Parquet needs pyarrow,
    in the same extra: `to_pandas(table).to_parquet("heads.parquet")`.

    Raises:
      ImportError: pandas is not installed (one line naming the extra).
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("tables as DataFrames need pandas: pip install 'spectrax[pandas]'") from None
    return pd.DataFrame({column: np.asarray(values) for column, values in table.items()})


class ColumnTable(dict):
    """A column table `{column: (rows,) array}` (a plain dict) that converts itself to a DataFrame:
    `tables.heads.to_pandas()`."""

    def to_pandas(self):
        """This table as a `pandas.DataFrame` (`to_pandas`; the `pandas` extra)."""
        return to_pandas(self)


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


def format_percentile(pct, draws: int, digits: int = 3) -> str:
    """A Monte Carlo percentile (0-100) among `draws` finite draws as a report shows it: beyond every
    draw it says only that the observation is rarer than 1 in `draws`, so 0 reads `< 1/N` and 100
    reads `> 1 - 1/N` (N = `draws`); "n/a" for NaN/None."""
    x = json_value(pct)
    if x is None:
        return "n/a"
    if x <= 0:
        return f"< 1/{draws}"
    if x >= 100:
        return f"> 1 - 1/{draws}"
    return format_number(x, digits)


def concat(tables: Sequence[Table]) -> ColumnTable:
    """Row-wise concatenation of tables with the same columns."""
    return ColumnTable({k: np.concatenate([np.asarray(t[k]) for t in tables]) for k in tables[0]})


def to_markdown(table: Table, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    columns = list(columns or table)
    rows = len(table[columns[0]])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_number(table[c][i], digits) for c in columns) + " |" for i in range(rows)]
    return "\n".join(lines)


def list_markdown(rows: Mapping[str, Sequence]) -> str:
    """`to_markdown` of `{column: list}`: a column holding text stays text, any other is float
    (None -> NaN -> "n/a")."""
    return to_markdown({k: np.array(v, dtype=object if any(isinstance(x, str) for x in v) else float)
                        for k, v in rows.items()})


def short_list(items, limit: int = 3) -> str:
    """`a, b, c and 4 more`: a list that keeps an error or report line short, however long it is."""
    items = [str(x) for x in items]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
