"""Empirical spectral density (ESD) metrics of whole 2-D weights, as WeightWatcher 0.7 computes them (docs/statistics.md §2).

For an `(m, n)` weight with singular values `s (k,)`, `k = min(m, n)`, `N = max(m, n)`, the ESD is
the set of eigenvalues of `W^T W`, `lambda = s^2`, unnormalized as in WeightWatcher 0.7 (its
`normalize` option, dividing by N, was removed in 0.6.5). Columns carrying a WeightWatcher name
mean what `WeightWatcher.analyze(mp_fit=True)` means by it, in its units (`ESD_STATISTICS`, per
matrix; agreement measured against weightwatcher 0.7.7 in tests/analyses/test_weightwatcher_parity.py):

- `alpha`: power-law exponent of the ESD's upper tail, `p(lambda) ~ lambda^-alpha` for
  `lambda >= xmin`, continuous maximum likelihood with `xmin` the eigenvalue minimizing
  WeightWatcher's KS distance `max |F - t/n|` over every tail of at least 2 eigenvalues above
  1e-5 (`spectral.powerlaw_fit(ks="weightwatcher")`).
- `alpha_ks`: that distance at `xmin` (WeightWatcher's `D`). `xmin`: the tail start (units of s^2).
- `num_pl_spikes`: eigenvalues `>= xmin`. `tail_fraction`: the same over `k`.
- `alpha_weighted = alpha * log10(lambda_max)`, `log_alpha_norm = log10(sum lambda^alpha)`:
  WeightWatcher's headline metrics (model level: their mean over matrices, `esd_summary`).
- `lambda_max = s_1^2`; `stable_rank = sum(lambda) / lambda_max`.
- `num_spikes`, `bulk_max`, `mp_softrank = bulk_max / lambda_max`: WeightWatcher's MP fit
  (`spectral.mp_fit_weightwatcher`: KDE fit of the MP scale on the mean-1 rescaled ESD, spikes
  above the bulk edge plus a Tracy-Widom margin). `spike_fraction = num_spikes / k`.

spectrax's own columns, kept because they answer something WeightWatcher's do not:

- `alpha_clauset`: the tail exponent with `xmin` chosen by the two-sided KS statistic of Clauset,
  Shalizi & Newman (2009) over tails of at least `MIN_TAIL` eigenvalues. WeightWatcher's distance
  leaves out the upper step of the empirical CDF, and it accepts tails of 2 eigenvalues, where
  alpha is mostly noise; on spectra with a clean power-law tail both agree.
- `mp_scale`: the MP scale fitted by the median of `lambda / N` (`spectral.mp_fit`): with the
  `1/N` normalization it is the entry variance the bulk implies, comparable across shapes, and the
  median needs no bandwidth or grid and ignores spikes. `bulk_edge`: its upper edge
  `mp_scale (1 + sqrt(k / N))^2`, in units of `s^2 / N` (the report's ESD plots draw it).

For pure noise, `alpha` is large (the fit lands on the steep MP edge); it is a description of the
tail, not a test that a power law holds.

`matrix_esd_rows` reports each statistic beside two baselines, because they answer different
questions:

- the Gaussian null (`X_null_mean`, `X_null_std`, `X_z`, `X_pct`, with effect sizes `X_diff`,
  `X_ratio` and Monte Carlo errors `X_null_mean_se`, `X_null_std_se`): shape- and scale-matched
  i.i.d. Gaussian matrices, drawn directly in singular values (`gaussian_spectrum_draws`, cheap),
  one null per shape in a layer pooled over the matrices of that shape (`_pooled_null`).
  It asks "is this ESD what a random matrix of this shape gives?"; for a matrix stored in a GGUF
  block type the draws are whole Gaussian matrices quantized the same way (`quantized`), pooled
  over the layer's matrices of that shape, storage type and stored axis, as `rank` does;
- the shuffled-entries baseline (`X_shuffle_mean`, `X_shuffle_std`, `X_shuffle_z`): the same
  matrix with its entries permuted (`shuffle_null`; needs an SVD per draw, so it is the
  expensive one). It asks "is it more than its entry distribution gives?". Heavy-tailed entries
  with no correlations at all (e.g. Student-t) already produce large outlying eigenvalues and a
  heavy-tailed ESD, which the Gaussian null flags as structure; shuffling keeps those entries and
  shows the same tail, so only a departure from the shuffle baseline points at correlations
  (learned structure) between entries.

Read `X_shuffle_z` with care: with few draws (default 4) the baseline's std is itself noisy (the z
is roughly t-distributed with `shuffle_draws - 1` degrees of freedom), and a statistic ruled by a
few huge entries (`lambda_max` of a heavy-tailed matrix) barely moves under shuffling, so a small
relative difference can give a large z. Compare `X` with `X_shuffle_mean` and `X_null_mean`
directly as well: when the shuffle mean sits near `X` and the Gaussian null mean far from it, the
entry distribution explains the departure.

Matrices holding NaN/Inf get NaN statistics; an all-zero matrix gets zero `lambda_max`, `mp_scale`
and `bulk_edge`, and NaN for the ratios, the tail fit and WeightWatcher's MP fit (which rescales by
the mean eigenvalue); no exception in either case.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectrax.backend import jit
from spectrax import spectral as sp
from spectrax.analyses import quantized
from spectrax.analyses.aggregate import by_kind
from spectrax.analyses.base import Analysis, LayerInput, LayerOutput, Options, Plot, Section, Spectrum, Tables
from spectrax.analyses.tables import Table, list_markdown
from spectrax.analyses.spectra import WholeSpectra, shape_groups, whole_spectra
from spectrax.analyses.weights import float_matrix, matrix_columns

__all__ = ["ESD_STATISTICS", "EsdSummary", "MIN_TAIL", "WW_SUMMARY", "analysis", "esd_statistics", "esd_summary",
           "matrix_esd_rows", "render", "summarize"]

ESD_STATISTICS = (
    # WeightWatcher 0.7 `analyze(mp_fit=True)` columns: same names, same rules, same units
    "alpha",
    "alpha_ks",
    "xmin",
    "num_pl_spikes",
    "alpha_weighted",
    "log_alpha_norm",
    "lambda_max",
    "stable_rank",
    "num_spikes",
    "bulk_max",
    "mp_softrank",
    # spectrax's own
    "alpha_clauset",
    "tail_fraction",
    "spike_fraction",
    "mp_scale",
    "bulk_edge",
)
WW_SUMMARY = ("alpha", "alpha_weighted", "log_alpha_norm", "stable_rank", "mp_softrank")
MIN_TAIL = 10  # smallest power-law tail; matrices with min(m, n) < MIN_TAIL get NaN tail fits
_BASELINES = ("null_mean", "null_std", "z", "pct", "diff", "ratio", "null_mean_se", "null_std_se", "shuffle_mean",
              "shuffle_std", "shuffle_z")
_COLUMNS = tuple(c for name in ESD_STATISTICS for c in (name, *(f"{name}_{b}" for b in _BASELINES)))


def _ratio(num, den):
    """num / den, NaN where den == 0 (no 0/0 traced)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), jnp.full((), jnp.nan, num.dtype))


@functools.partial(jit, static_argnames=("shape",), work=lambda a: jnp.size(a["s"]) * jnp.shape(a["s"])[-1])
def esd_statistics(s: jax.Array, shape: tuple[int, int]) -> dict[str, jax.Array]:
    """ESD statistics of singular values `s (..., k)` of `(m, n) = shape` matrices, `k = min(m, n)`.

    Batched over the leading axes; returns `{name: (...)}` for every name in `ESD_STATISTICS`,
    in `s`'s float dtype (f32 for bf16/f16 input). NaN rows for spectra holding NaN/Inf.
    """
    shape = tuple(int(d) for d in shape)
    k = min(shape)
    chex.assert_axis_dimension(s, -1, k)
    s = jnp.asarray(s, jnp.promote_types(s.dtype, jnp.float32))
    evals = s * s                                                     # WeightWatcher's eigenvalues, (..., k)
    dtype = evals.dtype
    nan = jnp.full((), jnp.nan, dtype)
    finite = jnp.all(jnp.isfinite(evals), axis=-1)
    lambda_max = jnp.where(finite, jnp.max(evals, axis=-1), nan)

    ww = sp.mp_fit_weightwatcher(evals, shape)
    mp = sp.mp_fit(s, shape)                                          # median fit, on s^2 / N
    return {
        **_tail(evals, k, lambda_max),
        "lambda_max": lambda_max,
        "stable_rank": _ratio(jnp.sum(evals, axis=-1), lambda_max),
        "num_spikes": ww.num_spikes,
        "bulk_max": ww.bulk_max,
        "mp_softrank": ww.mp_softrank,
        "spike_fraction": ww.num_spikes / k,
        "mp_scale": mp.sigma2,
        "bulk_edge": mp.lambda_plus,
    }


def _tail(evals, k: int, lambda_max) -> dict[str, jax.Array]:
    """Power-law tail columns of eigenvalues `evals (..., k)`; all NaN when `k < MIN_TAIL`."""
    if k < MIN_TAIL:  # static: decided once per shape
        nan = jnp.full(evals.shape[:-1], jnp.nan, evals.dtype)
        return dict.fromkeys(("alpha", "alpha_ks", "xmin", "num_pl_spikes", "alpha_weighted", "log_alpha_norm",
                              "alpha_clauset", "tail_fraction"), nan)
    fit = sp.powerlaw_fit(evals, min_tail=2, ks="weightwatcher", floor=sp.WW_EVALS_FLOOR)
    clauset = sp.powerlaw_fit(evals, min_tail=MIN_TAIL)
    fitted = jnp.isfinite(fit.alpha)
    num_tail = jnp.where(fitted, fit.num_tail.astype(evals.dtype), jnp.nan)
    log_evals = jnp.log(jnp.where(evals > 0, evals, 1.0))
    powers = jnp.where(evals > 0, fit.alpha[..., None] * log_evals, -jnp.inf)   # ln(lambda^alpha); 0^alpha = 0
    return {
        "alpha": fit.alpha,
        "alpha_ks": fit.ks,
        "xmin": fit.xmin,
        "num_pl_spikes": num_tail,
        "alpha_weighted": fit.alpha * jnp.log10(lambda_max),
        "log_alpha_norm": jnp.where(fitted, jax.nn.logsumexp(powers, axis=-1) / math.log(10.0), jnp.nan),
        "alpha_clauset": clauset.alpha,
        "tail_fraction": num_tail / k,
    }


def _matrix_statistics(w):
    """`esd_statistics` of matrices `w (..., m, n)`: the shuffle baseline's statistic function."""
    return esd_statistics(sp.singular_values(w, method="qr"), w.shape[-2:])


def matrix_esd_rows(
    matrices: Mapping[str, np.ndarray],
    key: jax.Array,
    *,
    num_draws: int = 16,
    shuffle_draws: int = 4,
    storage: Mapping[str, str] | None = None,
    spectra: WholeSpectra | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """ESD statistics of named 2-D matrices, each beside a Gaussian null and a shuffle baseline.

    Args:
      matrices: `{name: (m, n)}`, any float dtype (bf16/f16/fp8 upcast to f32); same-shaped
        matrices are batched into one call, so a shape compiles once however many layers share it.
      key: PRNG key for both baselines.
      num_draws: Gaussian-null draws (>= 2), drawn in singular values: cheap.
      shuffle_draws: entry-shuffled copies per matrix (>= 2), each needing a full SVD; 0 skips the
        shuffle baseline and leaves its columns NaN (the column set never changes, so tables from
        different runs line up).
      storage: `{name: storage type}`; a matrix stored in a quantizable GGUF type gets a Gaussian
        null of matrices quantized the same way along its stored rows (`quantized.noise_spectra`).
      spectra: the matrices' `whole_spectra`, when already computed (a run computes them once per
        layer for `rank` and `esd`); computed here otherwise.

    Returns:
      `{name: {column: scalar array}}`; for each `X` in `ESD_STATISTICS` the columns `X`,
      `X_null_mean`, `X_null_std`, `X_z`, `X_pct` (Gaussian null: is this what a random matrix of
      the shape gives?) and `X_shuffle_mean`, `X_shuffle_std`, `X_shuffle_z` (shuffled entries:
      is it more than the entry distribution gives? Heavy-tailed but uncorrelated entries already
      give a heavy-tailed ESD; only this baseline can show that). z is NaN where a baseline's std
      is 0.
    """
    if shuffle_draws == 1 or shuffle_draws < 0:
        raise ValueError(f"shuffle_draws must be 0 (skip) or >= 2 for a std, got {shuffle_draws}")
    spectra = whole_spectra(matrices) if spectra is None else spectra
    rows: dict[str, dict[str, np.ndarray]] = {}
    for i, (shape, names) in enumerate(shape_groups({name: np.shape(w) for name, w in matrices.items()})):
        k_gauss, k_shuffle = jax.random.split(jax.random.fold_in(key, i))
        s = np.stack([spectra.s[n] for n in names])                        # (B, k)
        observed = esd_statistics(s, shape)
        rms2 = np.array([spectra.mean_square[n] for n in names])
        template = jax.ShapeDtypeStruct((len(names), *shape), s.dtype)
        draws = sp.gaussian_spectrum_draws(k_gauss, template, num_draws=num_draws, match_scale=False)[0]
        columns = {c: np.array(v) for c, v in sp.null_columns(observed, _pooled_null(draws, rms2, shape)).items()}
        for group in quantized.noise_groups(k_gauss, names, shape, storage, num_draws=num_draws):
            if group.spectra is None:  # not quantized: the Gaussian null stands
                continue
            members = np.asarray(group.members)  # quantized: their null is quantized noise at their RMS
            null = _pooled_null(group.spectra, rms2[members], shape)
            for c, v in sp.null_columns({stat: x[members] for stat, x in observed.items()}, null).items():
                columns[c][members] = np.asarray(v)
        if shuffle_draws:
            # the same matrices stacked as one batch per shape: each draw shuffles them all with one key
            batch = jnp.asarray(np.stack([float_matrix(n, matrices[n]) for n in names]))  # (B, m, n)
            shuffled = sp.shuffle_null(k_shuffle, _matrix_statistics, batch, num_draws=shuffle_draws)
            del batch
            for name, summary in sp.split_null(shuffled).items():
                columns[f"{name}_shuffle_mean"] = np.asarray(summary.mean)
                columns[f"{name}_shuffle_std"] = np.asarray(summary.std)
                columns[f"{name}_shuffle_z"] = np.asarray(sp.zscore(observed[name], summary))
        else:
            for name in ESD_STATISTICS:
                for suffix in ("shuffle_mean", "shuffle_std", "shuffle_z"):
                    columns[f"{name}_{suffix}"] = np.full(len(names), np.nan, columns[name].dtype)
        for j, name in enumerate(names):
            rows[name] = {c: columns[c][j] for c in _COLUMNS}
    return rows


_SQUARED_SCALE = ("xmin", "lambda_max", "bulk_max", "mp_scale", "bulk_edge")  # eigenvalue units: scale rms^2
_LOG_SCALE = ("alpha_weighted", "log_alpha_norm")  # shift by alpha * log10(rms^2)


def _pooled_null(draws, rms2: np.ndarray, shape: tuple[int, int]) -> dict[str, sp.NullSummary]:
    """The null of `ESD_STATISTICS` shared by B matrices of one shape with mean squared entries
    `rms2 (B,)` (and, for a quantization-aware null, one storage type and stored axis), from the
    spectra `draws (N, B, k)` of their stand-ins (Gaussian, or quantized Gaussian:
    `quantized.noise_groups`): each draw rescaled to unit RMS (`spectral.unit_rms`) and pooled over
    the B matrices (`spectral.pool_null`), each matrix's null being the unit null at its own RMS:
    eigenvalue-valued statistics times `rms^2`, `alpha_weighted` and `log_alpha_norm` shifted by
    `alpha * log10(rms^2)` (the draw's own alpha), the rest scale-free. So each null rests on `N * B`
    draws at the cost of `N`."""
    unit = jnp.asarray(sp.unit_rms(draws, shape[0] * shape[1]))
    null = sp.split_null(sp.null_from_draws(functools.partial(esd_statistics, shape=shape), unit))
    pooled = {name: sp.pool_null(one, axis=0, scale=rms2 if name in _SQUARED_SCALE else None)
              for name, one in null.items()}
    alpha = np.asarray(pooled["alpha"].draws, np.float64)                      # (num_draws * B, 1)
    for name in _LOG_SCALE:
        with np.errstate(divide="ignore", invalid="ignore"):
            shifted = np.asarray(pooled[name].draws, np.float64) + alpha * np.log10(rms2)
        with warnings.catch_warnings():  # a matrix whose every draw is NaN (too small for a tail) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            pooled[name] = sp.NullSummary(np.nanmean(shifted, axis=0), np.nanstd(shifted, axis=0, ddof=1), shifted)
    return pooled


def esd_summary(rows: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, float]:
    """WeightWatcher's model-level metrics (its `get_summary`): the mean of each `WW_SUMMARY` column
    over the matrices of `rows` (`{matrix: {column: value}}`, e.g. all of a model's
    `matrix_esd_rows`), matrices without a value (too small for a tail fit) left out, as pandas does.

    WeightWatcher averages over the modules it finds, which counts a tied output head a second time
    and a fused projection once; spectrax averages over the matrices it analyzed (each once, fused
    projections as their parts), so on such models the two means differ slightly.
    """
    summary = {}
    for name in WW_SUMMARY:
        values = np.array([float(row[name]) for row in rows.values()], np.float64)
        values = values[np.isfinite(values)]
        summary[name] = float(values.mean()) if values.size else float("nan")
    return summary


# ----------------------------------------------------------------------------- the analysis


def _layer_rows(inputs: LayerInput, key: jax.Array, options: Options) -> LayerOutput:
    """Rows of one layer's matrices; in a layer (not the embedding), the singular values of the
    matrix with the most spikes are kept for the report's spectrum figure (those the statistics
    were computed from: no further decomposition)."""
    shapes = {name: tuple(w.shape) for name, w in inputs.matrices.items()}
    spectra = whole_spectra(inputs.matrices) if inputs.spectra is None else inputs.spectra
    rows = matrix_columns(matrix_esd_rows(inputs.matrices, key, num_draws=options.num_draws,
                                          shuffle_draws=options.shuffle_draws, storage=inputs.storage,
                                          spectra=spectra), shapes)
    spikes = np.asarray(rows["num_spikes"], float)
    if inputs.layer is None or not np.isfinite(spikes).any():
        return LayerOutput(rows)
    name = str(rows["matrix"][int(np.nanargmax(spikes))])
    return LayerOutput(rows, {"spectrum": np.asarray(spectra.s[name], np.float32), "shape": np.array(shapes[name]),
                              "matrix": np.array(name)})


@dataclasses.dataclass(frozen=True)
class EsdSummary:
    """Per matrix kind, per statistic: the mean over layers of the statistic, its Gaussian-null
    mean, z and shuffled-baseline mean (`aggregate.by_kind`); `shuffle_draws` as run. Kept for the
    report: the per-matrix table and the spectrum of the layer matrix with the most spikes."""

    by_kind: Mapping[str, Mapping[str, Mapping[str, object]]]
    shuffle_draws: int
    matrices: Table = dataclasses.field(repr=False)
    spectra: tuple[Spectrum, ...] = ()
    weightwatcher: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {**self.by_kind, "weightwatcher_summary": dict(self.weightwatcher)}


def summarize(tables: Tables, spec, options: Options) -> EsdSummary:
    matrices, spectra = tables.matrices, ()
    spikes = np.asarray(matrices["num_spikes"], float)
    inside = np.asarray(matrices["layer"]) >= 0
    if (np.isfinite(spikes) & inside).any():
        i = int(np.nanargmax(np.where(inside, spikes, np.nan)))
        kept = tables.arrays.get("esd", {}).get(int(matrices["layer"][i]))
        if kept is not None:
            layer, name = int(matrices["layer"][i]), str(kept["matrix"])
            j = int(np.flatnonzero((np.asarray(matrices["layer"]) == layer) & (matrices["matrix"] == name))[0])
            spectra = (Spectrum(layer, name, None, "most spikes", kept["spectrum"], tuple(int(n) for n in kept["shape"]),
                                float(matrices["bulk_max"][j]), int(matrices["num_spikes"][j])),)
    rows = {i: {c: matrices[c][i] for c in WW_SUMMARY} for i in range(len(matrices["matrix"]))}
    return EsdSummary(by_kind(matrices, ESD_STATISTICS), options.shuffle_draws, matrices, spectra, esd_summary(rows))


def render(summary: EsdSummary) -> Section:
    """The report's ESD section and the z heatmap of the largest eigenvalue."""
    kinds = list(summary.by_kind)
    rows: dict[str, list] = {"matrix": kinds}
    for stat in ("alpha", "num_spikes"):
        if stat not in summary.by_kind[kinds[0]]:
            continue
        rows[stat] = [summary.by_kind[k][stat]["mean"] for k in kinds]
        rows[f"{stat} Gaussian null"] = [summary.by_kind[k][stat]["null_mean"] for k in kinds]
        rows[f"{stat} shuffled"] = [summary.by_kind[k][stat].get("shuffle_mean") for k in kinds]
    shuffled = (f"and against the same matrix with its entries shuffled ({summary.shuffle_draws} draws: the entry "
                "distribution kept, the correlations destroyed)" if summary.shuffle_draws else
                "(shuffled baselines were skipped: `--shuffle-draws 0`)")
    text = "\n".join([
        "## Empirical spectral densities (esd)",
        "",
        "WeightWatcher's statistics with its rules and units (0.7): eigenvalues λ = s² of every weight matrix, "
        "a Marchenko-Pastur fit (bulk edge, spikes above it with their Tracy-Widom margin) and the power-law "
        f"tail exponent α (maximum likelihood, x_min by minimum KS), each against shape-matched Gaussian matrices {shuffled}. A heavy tail that the shuffled matrix "
        "shares comes from the entry distribution, not from learned correlations. Mean over layers per kind:",
        "",
        list_markdown(rows),
        "",
    ])
    plot = Plot("matrix_heatmap", "heatmap_matrices_lambda_max_z", (summary.matrices, "lambda_max_z"),
                {"title": "largest eigenvalue per weight matrix: z against Gaussian null"})
    return Section(text, plots=(plot,), spectra=summary.spectra)


analysis = Analysis(name="esd", table="matrices", layer_rows=_layer_rows, summarize=summarize, render=render, key_id=3,
                    reads=("attn", "mlp"), spectra=True)
