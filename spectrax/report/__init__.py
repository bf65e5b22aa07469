"""Rendering results: tables, figures and report text, and the folders they are written into.

- `tables`: column tables (`{column: 1-D array}`) to CSV, JSON and Markdown;
- `plots`: figures (matplotlib's object API; importing it never touches pyplot or the backend);
- `sections`: the Markdown sections of `report.md`, from an analysis's summary;
- `output`: result folders written atomically and resumable after an interruption.

The submodules are imported where they are used (`from spectrax.report import tables`), so that
reading a table does not load matplotlib.
"""

__all__ = ["output", "plots", "sections", "tables"]
