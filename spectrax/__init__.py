"""spectrax: spectral structure and training dynamics of transformers, in JAX, next to random-matrix nulls.

    import spectrax as sx
    info = sx.inspect("path/to/checkpoint")          # headers only
    model = sx.load("path/to/checkpoint")            # canonical per-head pytree
    for block in sx.stream_layers("path/to/checkpoint"):   # one layer at a time
        q = block.params["attn"]["q"]                # (1, heads, head_dim, hidden)

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

__all__ = [
    "CheckpointError",
    "ConfigError",
    "LayerBlock",
    "Model",
    "ModelSpec",
    "UnsupportedCheckpointError",
    "__version__",
    "configure_cpu",
    "enable_compilation_cache",
    "inspect",
    "load",
    "open_source",
    "restore_params",
    "save_params",
    "stream_layers",
]
