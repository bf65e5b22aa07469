"""Column tables as pandas DataFrames and Parquet files (the `pandas` extra)."""

import sys

import numpy as np
import pytest

from spectrax.analyses.base import Tables
from spectrax.analyses.tables import ColumnTable, concat, to_pandas


def _table() -> dict:
    return {"layer": np.array([0, 0, 1]), "matrix": np.array(["attn.q", "mlp.up", "attn.q"], dtype=object),
            "erank": np.array([1.5, np.nan, 3.25]), "finite": np.array([1, 0, 1], np.int64)}


def test_tables_convert_to_dataframes_and_parquet(tmp_path):
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    tables = Tables(heads=concat([_table(), _table()]), matrices=_table())
    assert isinstance(tables.heads, ColumnTable) and isinstance(tables.matrices, ColumnTable)
    frame = tables.matrices.to_pandas()
    assert list(frame.columns) == ["layer", "matrix", "erank", "finite"]
    assert frame["matrix"].tolist() == ["attn.q", "mlp.up", "attn.q"]
    assert np.isnan(frame["erank"][1]) and frame["erank"][2] == 3.25
    assert len(tables.heads.to_pandas()) == 6
    frame.to_parquet(tmp_path / "matrices.parquet")
    import pandas as pd

    back = pd.read_parquet(tmp_path / "matrices.parquet")
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert back["finite"].dtype == np.int64


def test_without_pandas_the_error_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    with pytest.raises(ImportError, match=r"^tables as DataFrames need pandas: pip install 'spectrax\[pandas\]'$"):
        to_pandas(_table())


def test_a_percentile_beyond_every_draw_reads_as_a_bound():
    from spectrax.analyses.tables import format_percentile

    assert format_percentile(0.0, 96) == "< 1/96"
    assert format_percentile(100.0, 96) == "> 1 - 1/96"
    assert format_percentile(np.float32(37.5), 96) == "37.5"
    assert format_percentile(float("nan"), 96) == format_percentile(None, 96) == "n/a"
