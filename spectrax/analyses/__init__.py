"""Research analyses composed from the kernels and the streaming loader.

    from spectrax.analyses import analyze, compare, collect, Options
    analyze("path/to/checkpoint", "results/")                 # the `spectrax analyze` folder
    tables = collect("path/to/checkpoint", analyses=["laws", "kernel"], options=Options(num_draws=32))
    tables.heads["ssr_qk"], tables.heads["ssr_qk_null_mean"]   # per (layer, head) columns
"""

from spectrax.analyses.analyze import analyze
from spectrax.analyses.pipeline import ANALYSES, Options, Tables, collect
from spectrax.analyses.compare import compare

__all__ = ["ANALYSES", "Options", "Tables", "analyze", "collect", "compare"]
