"""Rendering results: tables, figures and report text. Nothing here computes a statistic or keeps
state between runs (resumable folders are `spectrax.run.store`'s).

- `tables`: column tables (`{column: 1-D array}`) written as CSV and JSON;
- `plots`: figures (matplotlib's object API; importing it never touches pyplot or the backend),
  and `draw` for an analysis's `Plot`;
- `sections`: `report.md`'s header, each analysis's `Section` written out, the comparison report.

The submodules are imported where they are used (`from spectrax.report import tables`), so that
writing a table does not load matplotlib.
"""

__all__ = ["plots", "sections", "tables"]
