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

__version__ = "0.1.0"

# The analyses' runners load jax kernels, tqdm and matplotlib: imported when first used.
_RUN = ("Options", "RunConfig", "analyze", "collect", "compare")


def __getattr__(name: str):
    if name in _RUN:
        import spectrax.run

        return getattr(spectrax.run, name)
    raise AttributeError(f"module 'spectrax' has no attribute {name!r}")


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
