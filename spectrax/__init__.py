"""spectrax: spectral structure and training dynamics of transformers, in JAX, next to random-matrix nulls.

    import spectrax as sx
    info = sx.inspect("path/to/checkpoint")          # headers only
    model = sx.load("path/to/checkpoint")            # canonical per-head pytree
    for block in sx.stream_layers("path/to/checkpoint"):   # one layer at a time
        q = block.params["attn"]["q"]                # (1, heads, head_dim, hidden)
"""

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
    "inspect",
    "load",
    "open_source",
    "restore_params",
    "save_params",
    "stream_layers",
]
