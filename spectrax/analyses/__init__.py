"""Research analyses composed from the kernels and the streaming loader.

    from spectrax.analyses import analyze, compare, collect, Options
    analyze("path/to/checkpoint", "results/")                 # the `spectrax analyze` folder
    tables = collect("path/to/checkpoint", analyses=["laws", "kernel"], options=Options(num_draws=32))
    tables.heads["ssr_qk"], tables.heads["ssr_qk_null_mean"]   # per (layer, head) columns

`activations` measures what flows through a checkpoint (with `spectrax.models.capture`): spectra of
the residual stream, energy of activation differences in weight-derived subspaces, and H/G/Z
alignments of the q/k/v projections, each beside its null.
"""

from spectrax.analyses import activations
from spectrax.analyses.analyze import analyze
from spectrax.analyses.pipeline import ANALYSES, Options, Tables, collect
from spectrax.analyses.compare import compare

__all__ = ["ANALYSES", "Options", "Tables", "activations", "analyze", "collect", "compare"]
