"""Running analyses on checkpoints: stream once, keep finished layers, publish result folders.

The layer above `analyses` (statistics) and `report` (rendering), below the command line:

- `streaming`: `collect` streams a checkpoint once through the chosen analyses, storing each finished layer
  (resumable);
- `store`: resumable work folders (`RunFolder`, `run_folder`) and atomic output folders;
- `analysis`: `analyze`, what `spectrax analyze` writes (`RunConfig` beside the statistics' `Options`);
- `comparison`: `compare`, two checkpoints side by side, differences in null-spread units.

    from spectrax.run import Options, analyze, collect, compare
    analyze("path/to/model", "results/model", Options(num_draws=32), analyses=["laws", "kernel"])
"""

import importlib

__all__ = ["Options", "RunConfig", "Tables", "analyze", "collect", "compare", "parse_layers"]

# Imported when first used, so that `spectrax.run.store` (the command line's interruption note)
# does not load the analyses and matplotlib.
_HOME = {"Options": "spectrax.analyses.base", "Tables": "spectrax.analyses.base", "RunConfig": "spectrax.run.analysis",
         "analyze": "spectrax.run.analysis", "collect": "spectrax.run.streaming", "parse_layers": "spectrax.run.streaming",
         "compare": "spectrax.run.comparison"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'spectrax.run' has no attribute {name!r}")
