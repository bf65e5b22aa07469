"""spectrax: spectral structure and training dynamics of transformers, in JAX, next to random-matrix nulls.

    import spectrax as sx
    info = sx.inspect("path/to/checkpoint")          # headers only
    model = sx.load("path/to/checkpoint")            # canonical per-head pytree
    for block in sx.stream_layers("path/to/checkpoint"):   # one layer at a time
        q = block.params["attn"]["q"]                # (1, heads, head_dim, hidden)
    tables = sx.collect("path/to/checkpoint", analyses=["laws"])    # per-head table, nulls beside
    sx.analyze("path/to/checkpoint", "results/")     # tables, report.md, plots/

Importing spectrax changes nothing in the process (environment, matplotlib backend, JAX
configuration); `sx.configure_cpu()` sizes JAX's CPU backend for batched decompositions when
called before JAX starts (see spectrax/backend.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Names resolved on first use (PEP 562), so `import spectrax` (and `spectrax --help`) does not start
# JAX, matplotlib or the checkpoint readers: a name is imported from its module when first read.
_EXPORTS = {
    "configure_cpu": "spectrax.backend",
    "enable_compilation_cache": "spectrax.backend",
    **dict.fromkeys(
        ["CheckpointError", "ConfigError", "LayerBlock", "Model", "ModelSpec", "UnsupportedCheckpointError",
         "inspect", "load", "open_source", "restore_params", "save_params", "stream_layers"],
        "spectrax.io",
    ),
    "Options": "spectrax.analyses.base",
    "RunConfig": "spectrax.run.analysis",
    "analyze": "spectrax.run.analysis",
    "collect": "spectrax.run.streaming",
    "compare": "spectrax.run.comparison",
}
_SUBPACKAGES = ("analyses", "backend", "cli", "data", "dynamics", "io", "models", "optim", "report", "run", "spectral")

__all__ = [
    "CheckpointError",
    "ConfigError",
    "LayerBlock",
    "Model",
    "ModelSpec",
    "Options",
    "RunConfig",
    "UnsupportedCheckpointError",
    "__version__",
    "analyze",
    "collect",
    "compare",
    "configure_cpu",
    "enable_compilation_cache",
    "inspect",
    "load",
    "open_source",
    "restore_params",
    "save_params",
    "stream_layers",
]

if TYPE_CHECKING:  # what static tools see
    from spectrax.analyses.base import Options
    from spectrax.backend import configure_cpu, enable_compilation_cache
    from spectrax.io import (
        CheckpointError,
        ConfigError,
        LayerBlock,
        Model,
        ModelSpec,
        UnsupportedCheckpointError,
        inspect,
        load,
        open_source,
        restore_params,
        save_params,
        stream_layers,
    )
    from spectrax.run.analysis import RunConfig, analyze
    from spectrax.run.comparison import compare
    from spectrax.run.streaming import collect


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"spectrax.{name}")
    else:
        raise AttributeError(f"module 'spectrax' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBPACKAGES))
