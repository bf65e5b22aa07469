"""spectrax: spectral structure and training dynamics of transformers, in JAX, next to random-matrix nulls.

    import spectrax as sx
    info = sx.inspect("path/to/checkpoint")          # headers only
    model = sx.load("path/to/checkpoint")            # canonical per-head pytree
    for block in sx.stream_layers("path/to/checkpoint"):   # one layer at a time
        q = block.params["attn"]["q"]                # (1, heads, head_dim, hidden)
"""

import os as _os

# jaxlib's batched CPU LAPACK kernels (QR, SVD) block a thread of XLA's CPU thread pool while
# their sub-tasks wait in that same pool, so a program with as many decompositions in flight as
# pool threads (2 on a 2-core machine) deadlocks. NPROC sizes that pool when JAX first starts its
# CPU backend; a pool larger than the decompositions in flight avoids the hang (4x the cores: the
# command line runs one CPU device per core, each with its own decompositions in flight). A value
# already set wins; importing spectrax after JAX has started its backend leaves the pool as it is.
_os.environ.setdefault("NPROC", str(max(8, 4 * (_os.cpu_count() or 1))))
# With that larger pool, multithreaded OpenBLAS inside each LAPACK call oversubscribes the cores
# (measured 2.5-16x slower on a 2-core machine, benchmarks/RESULTS.md); one BLAS thread per call.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from spectrax.io import (  # noqa: E402
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
