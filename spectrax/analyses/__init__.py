"""Research analyses composed from the kernels: pure statistics, no file I/O.

An analysis is a value (`Analysis`: one layer's rows, the summary of the tables, the description
of its report section); `registry.ANALYSES` lists those `spectrax analyze` knows by name:

- `laws`: per-head Q/K/V spectra and singular vectors against Gaussian and exact nulls;
- `rank`: whole-matrix rank statistics of every 2-D weight;
- `kernel`: QK-kernel spectra, FFN alignment, layer x layer subspace similarity, bottleneck;
- `esd`: empirical spectral densities (Marchenko-Pastur, spikes, power-law tail) against
  Gaussian and shuffled baselines;
- `charge` (not run by default, `registry.DEFAULT`): the conserved charge of the attention
  reparametrization per head and the laws at the balanced point (`gauge` classifies every per-head
  column as invariant or parametrization-dependent).

Streaming a checkpoint through them and writing result folders is `spectrax.run`'s job:

    from spectrax.run import Options, analyze, collect
    tables = collect("path/to/checkpoint", analyses=["laws", "kernel"], options=Options(num_draws=32))
    tables.heads["ssr_qk"], tables.heads["ssr_qk_null_mean"]   # per (layer, head) columns

`activations` measures what flows through a checkpoint (with `spectrax.models.capture`): spectra of
the residual stream, energy of activation differences in weight-derived subspaces, and H/G/Z
alignments of the q/k/v projections, each beside its null.
"""

from spectrax.analyses import activations
from spectrax.analyses.base import Analysis, LayerInput, LayerOutput, Options, Plot, Section, Spectrum, Tables
from spectrax.analyses.registry import ANALYSES

__all__ = ["ANALYSES", "Analysis", "LayerInput", "LayerOutput", "Options", "Plot", "Section", "Spectrum", "Tables",
           "activations"]
