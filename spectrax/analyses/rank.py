"""Whole-matrix rank statistics (docs/statistics.md §2) of every 2-D weight, each beside its random-matrix null.

For each layer's full projections W_Q `(H*D, E)`, W_K, W_V `(KV*D, E)`, W_O (as `(H*D, E)`: the
same singular values), the MLP matrices, and the token embedding / untied output head:

- `erank` (entropy of s / sum(s)), `erank_squared` (of s^2 / sum(s^2)), `max_mean` (s_1 / mean s),
  `stable_rank` (sum s^2 / s_1^2), `sigma_max`;
- `ks_mp`: KS distance of the scale-normalized ESD to Marchenko-Pastur of the same aspect ratio;
- `ks_gauss`: two-sample KS distance of s / mean(s) to the same for shape-matched Gaussian
  matrices.

Unlike the source, which compared raw singular values with those of a unit-variance Gaussian (so
it mostly measured the weights' scale), both distances are scale-free. Every statistic comes with
a Monte Carlo null over shape- and scale-matched Gaussian matrices (drawn directly in singular
values), so `X_z` says whether the weight departs from what a random matrix of its shape does.
The pipeline's `crop=c` hands in only each matrix's top-left `c x c` block, to reproduce the
source's 256 x 256 protocol.

Matrices of one shape in a layer (W_Q and W_O, the MLP gate and up projections) share one Gaussian
null: every statistic but `sigma_max` is scale-free, so their draws are pooled (`spectral.pool_null`)
and each null rests on all of them at the cost of one.

A matrix stored quantized (a GGUF block type such as Q4_0) is compared with quantized noise: each
null draw is a Gaussian matrix quantized and dequantized in the same type along its stored rows
(`spectrax.analyses.quantized`) before its statistics, pooled like the Gaussian null over the
layer's matrices of that shape, storage type and stored axis, and `quant_error_null` reports the
relative error that round trip makes. Types `gguf` can only decode (K- and IQ-types) keep the Gaussian
null, with `quant_error_null` NaN.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from spectrax import spectral as sp
from spectrax.analyses import quantized
from spectrax.analyses.aggregate import by_kind
from spectrax.analyses.base import Analysis, LayerInput, LayerOutput, Options, Plot, Section, Tables
from spectrax.analyses.tables import Table, list_markdown
from spectrax.analyses.spectra import WholeSpectra, shape_groups, whole_spectra
from spectrax.analyses.weights import matrix_columns

__all__ = ["RANK_STATISTICS", "RankSummary", "analysis", "matrix_rank_rows", "rank_statistics", "render", "summarize"]

RANK_STATISTICS = ("erank", "erank_squared", "max_mean", "stable_rank", "sigma_max", "ks_mp", "ks_gauss")
_REFERENCE_DRAWS = 4  # Gaussian matrices pooled into the ks_gauss reference sample


def rank_statistics(s: jax.Array, key: jax.Array, shape: tuple[int, int]) -> dict[str, jax.Array]:
    """Rank statistics of singular values `s (..., k)` of `(m, n) = shape` matrices.

    `key` draws the Gaussian reference sample of `ks_gauss`. Returns `{name: (...)}`.
    """
    return _statistics(s, _reference(key, shape, s.dtype), shape=shape)


def _reference(key, shape, dtype):
    """The pooled `ks_gauss` reference: mean-normalized spectra of Gaussian `shape` matrices, flat."""
    reference = sp.gaussian_singular_values(key, (_REFERENCE_DRAWS, *shape), dtype)
    return (reference / jnp.mean(reference, axis=-1, keepdims=True)).reshape(-1)


def _statistics(s, reference, *, shape):
    stats = sp.singular_value_statistics(s)
    return {
        **{name: stats[name] for name in ("erank", "erank_squared", "max_mean", "stable_rank", "sigma_max")},
        "ks_mp": sp.ks_mp(s, shape),
        "ks_gauss": sp.ks_two_sample(s / jnp.mean(s, axis=-1, keepdims=True), reference),
    }


def matrix_rank_rows(matrices: Mapping[str, np.ndarray], key: jax.Array, *, num_draws: int = 16,
                     storage: Mapping[str, str] | None = None,
                     spectra: WholeSpectra | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Statistics with null columns for named 2-D matrices.

    Args:
      matrices: `{name: (m, n)}` (any float dtype); same-shaped matrices are batched in one call
        and share one Gaussian null: unit-RMS stand-ins (`spectral.unit_rms`) pooled over them
        (`spectral.pool_null`), times each matrix's RMS for `sigma_max`, so each null rests on
        `num_draws` times the number of matrices of its shape.
      key: PRNG key for the reference samples and the nulls.
      storage: `{name: storage type}` (`"BF16"`, `"Q4_0"`, ...); a matrix in a type `gguf` can
        quantize gets the quantization-aware null, and every row a `quant_error_null` column.
      spectra: the matrices' `whole_spectra`, when already computed (a run computes them once per
        layer for `rank` and `esd`); computed here otherwise.
    Returns:
      `{name: {column: scalar array}}` with each statistic, `_null_mean`, `_null_std`, `_z`, `_pct`
      (and `quant_error_null` with `storage`).
    """
    spectra = whole_spectra(matrices) if spectra is None else spectra
    rows: dict[str, dict[str, np.ndarray]] = {}
    for i, (shape, names) in enumerate(shape_groups({name: np.shape(w) for name, w in matrices.items()})):
        k_ref, k_null = jax.random.split(jax.random.fold_in(key, i))
        s = np.stack([spectra.s[n] for n in names])  # (B, k)
        observed = rank_statistics(s, k_ref, shape)
        # The draws share one fixed reference sample (its randomness is already averaged over by
        # the draws), computed once here: drawn inside each draw it cost four more Gaussian
        # spectra, i.e. four (k, k) SVDs, per draw.
        reference = _reference(jax.random.key(0), shape, s.dtype)
        template = jax.ShapeDtypeStruct((len(names), *shape), s.dtype)
        draws = sp.gaussian_spectrum_draws(k_null, template, num_draws=num_draws, match_scale=False)[0]
        rms = np.sqrt(np.array([spectra.mean_square[n] for n in names]))
        columns = _pooled_null_columns(draws, shape, rms, observed, reference)
        for j, name in enumerate(names):
            rows[name] = {c: v[j] for c, v in columns.items()}
        if storage is not None:
            for name, quantized_columns in _quantized_nulls(shape, rms, names, storage, k_null, observed, reference,
                                                            num_draws).items():
                rows[name].update(quantized_columns)
    return rows


def _pooled_null_columns(draws, shape: tuple[int, int], rms: np.ndarray, observed: dict,
                         reference: jax.Array) -> dict[str, np.ndarray]:
    """Null columns of B matrices of `shape` (entry RMS `rms (B,)`, statistics `observed`) from the
    spectra `draws (N, B, k)` of their stand-ins, pooled over the B matrices: each draw rescaled to unit RMS
    (`spectral.unit_rms`), `sigma_max` scaled back to each matrix's RMS."""
    fixed = jnp.broadcast_to(reference, (draws.shape[0],) + reference.shape)
    stat_fn = functools.partial(_statistics, shape=shape)
    unit = sp.split_null(sp.null_from_draws(stat_fn, jnp.asarray(sp.unit_rms(draws, shape[0] * shape[1])), fixed))
    null = {name: sp.pool_null(one, axis=0, scale=rms if name == "sigma_max" else None) for name, one in unit.items()}
    return {c: np.asarray(v) for c, v in sp.null_columns(observed, null).items()}


def _quantized_nulls(shape: tuple[int, int], rms: np.ndarray, names: list[str], storage: Mapping[str, str],
                     key: jax.Array, observed: dict, reference: jax.Array,
                     num_draws: int) -> dict[str, dict[str, np.ndarray]]:
    """Null columns of B matrices of `shape` (entry RMS `rms (B,)`) named `names` over Gaussian draws quantized and
    dequantized as each is stored (`quantized.noise_spectra`, along its stored rows), pooled like
    the plain null: matrices of one storage type and stored axis share one null resting on all their
    draws (unit-RMS stand-ins, `sigma_max` scaled to each matrix's RMS); and `quant_error_null`, the
    mean relative error of those round trips. Matrices whose type is not a quantizable block type
    get only `quant_error_null` (NaN), keeping their Gaussian null."""
    out = {}
    for group in quantized.noise_groups(key, names, shape, storage, num_draws=num_draws):
        if group.spectra is None:
            out.update({names[j]: {"quant_error_null": group.error} for j in group.members})
            continue
        members = np.asarray(group.members)
        columns = _pooled_null_columns(group.spectra, shape, rms[members],
                                       {stat: x[members] for stat, x in observed.items()}, reference)
        for i, j in enumerate(group.members):
            out[names[j]] = {**{c: v[i] for c, v in columns.items()}, "quant_error_null": group.error}
    return out


# ----------------------------------------------------------------------------- the analysis


def _layer_rows(inputs: LayerInput, key: jax.Array, options: Options) -> LayerOutput:
    rows = matrix_rank_rows(inputs.matrices, key, num_draws=options.num_draws, storage=inputs.storage,
                            spectra=inputs.spectra)
    return LayerOutput(matrix_columns(rows, {name: tuple(w.shape) for name, w in inputs.matrices.items()}))


@dataclasses.dataclass(frozen=True)
class RankSummary:
    """Per matrix kind, per statistic: the mean over layers of the statistic, its null mean and
    its z (`aggregate.by_kind`); `crop` as run. The per-matrix table is kept for the figures."""

    by_kind: Mapping[str, Mapping[str, Mapping[str, object]]]
    crop: int | None
    matrices: Table = dataclasses.field(repr=False)

    def to_json(self) -> dict:
        return dict(self.by_kind)


def summarize(tables: Tables, spec, options: Options) -> RankSummary:
    return RankSummary(by_kind(tables.matrices, RANK_STATISTICS), options.crop, tables.matrices)


def render(summary: RankSummary) -> Section:
    """The report's whole-matrix section and z heatmaps of erank and ks_mp."""
    kinds = list(summary.by_kind)
    rows: dict[str, list] = {"matrix": kinds}
    for stat in ("erank", "stable_rank", "max_mean", "ks_mp"):
        rows[stat] = [summary.by_kind[k][stat]["mean"] for k in kinds]
        rows[f"{stat} null"] = [summary.by_kind[k][stat]["null_mean"] for k in kinds]
        rows[f"{stat} z"] = [summary.by_kind[k][stat]["z"] for k in kinds]
    crop = summary.crop
    cropped = f" (top-left {crop}x{crop} block only, as in \"Emergent Low-Rank Structure in Neural Networks Trained on Prime Numbers\")" if crop else ""
    text = "\n".join([
        "## Whole-matrix statistics (rank)",
        "",
        f"Effective rank, stable rank, max/mean singular value and the KS distance of the scale-normalized "
        f"spectrum to Marchenko-Pastur, for every weight matrix{cropped}; mean over layers per matrix kind "
        "(`embed.tokens`/`lm_head` are single matrices). z: mean over layers of the z-score against "
        "shape-matched Gaussian matrices (only over matrices whose null is resolved). Gauge: the attention "
        "projections' statistics (`attn.*`) are parametrization-dependent, since W_Q → A W_Q, W_K → A⁻ᵀ W_K, "
        "W_V → B W_V, W_O → W_O B⁻¹ change them and not the function; the MLP and embedding matrices are "
        "untouched by these reparametrizations.",
        "",
        list_markdown(rows),
        "",
    ])
    plots = tuple(Plot("matrix_heatmap", f"heatmap_matrices_{stat}_z", (summary.matrices, f"{stat}_z"),
                       {"title": f"{stat} per weight matrix: z-score against Gaussian null"}) for stat in ("erank", "ks_mp"))
    return Section(text, plots=plots)


analysis = Analysis(name="rank", table="matrices", layer_rows=_layer_rows, summarize=summarize, render=render, key_id=1,
                    reads=("attn", "mlp"), spectra=True)
