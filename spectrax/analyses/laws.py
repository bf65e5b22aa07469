"""Per-head Q/K/V spectral statistics (docs/statistics.md §1), each beside its random-matrix null.

For every (layer, query head h) with its key/value head g = h // (H // KV):

- pair statistics of (W_Q,h, W_K,g) `_qk`, (W_Q,h, W_V,g) `_qv` and (W_K,g, W_V,g) `_kv`:
  pearson, ssr, alpha, alpha_mse (Monte Carlo null over the spectra of shape- and scale-matched
  Gaussian matrices), cos_u, cos_v, grassmann (exact nulls);
- single-matrix statistics of W_Q,h `_q`, W_K,g `_k`, W_V,g `_v`: sigma_max, cond, erank,
  stable_rank, max_mean (Monte Carlo null).

Each statistic X comes with `X_null_mean`, `X_null_std`, `X_z` (and `X_pct` for Monte Carlo
nulls). Heads holding NaN/Inf weights get NaN statistics and `finite = 0`; the run goes on.
Projections stored in a GGUF block type get stand-ins quantized the same way (`quantized`).

Degenerate matrices are flagged per head in `degenerate` (e.g. `"k zero; v rank-deficient"`) and
their undefined statistics left empty (NaN): an all-zero matrix, or one whose entries are all
subnormal in float32 (flushed to zero by the kernels), has no spectrum to compare, so every
statistic involving it is undefined; a rank-deficient one (smallest singular value below
`max(D, E) * eps * sigma_max`, numpy's `matrix_rank` rule) has arbitrary singular vectors for
its zero singular values, so its `cos_u`, `cos_v` and `grassmann` are undefined.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import chex
import jax
import numpy as np
import numpy.typing as npt

from spectrax import spectral as sp
from spectrax.analyses import gauge, quantized
from spectrax.analyses.aggregate import group_means, layer_groups, layer_means, model_values, relative_std_error, shown_z
from spectrax.analyses.base import Analysis, LayerInput, LayerOutput, Options, Plot, Section, Tables
from spectrax.analyses.precision import precision_table
from spectrax.analyses.tables import Table, format_number, format_percentile, json_value, list_markdown, short_list

__all__ = ["DEGENERACY", "ENCODERS", "HEADLINE", "MATRICES", "PAIRS", "LawsSummary", "analysis", "degeneracy", "head_laws",
           "laws_layer", "render", "summarize"]

PAIRS = ("qk", "qv", "kv")
ENCODERS = ("bert",)  # families without a causal depth stack: no "third law" table (docs/statistics.md §1)
MATRICES = ("q", "k", "v")
_SPECTRUM = ("sigma_max", "cond", "erank", "stable_rank", "max_mean")
_QUANTIZED = 1  # key fold of the quantized stand-ins (the Gaussian draws keep the layer key itself)


def _vector_pair_statistics(a: sp.SVDResult, b: sp.SVDResult) -> dict:
    """Pair statistics of singular vectors (exact nulls), from thin SVDs batched alike."""
    return {"cos_u": sp.mean_abs_cos(a.u, b.u), "cos_v": sp.mean_abs_cos(a.v, b.v), "grassmann": sp.grassmann(a.v, b.v)}


# Module-level partials, so each null compiles once per shape (stat_fn is a static argument).
_GQA_SPECTRA = functools.partial(sp.gqa_pair, sp.spectra_pair_statistics, axis=1)
_GQA_VECTORS = functools.partial(sp.gqa_pair, _vector_pair_statistics, axis=1)


def _columns(observed: dict, nulls: dict, mean_se: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """`spectral.null_columns`, with the Monte Carlo error of each pooled null mean in `mean_se`
    (`_pooled`: its draws are correlated where query heads share a K/V head) as `_null_mean_se`
    and in the z."""
    cols = {k: np.asarray(v) for k, v in sp.null_columns(observed, nulls).items()}
    for name, se in (mean_se or {}).items():
        se = np.broadcast_to(np.asarray(se, cols[name].dtype), cols[name].shape)
        cols[f"{name}_null_mean_se"] = se
        cols[f"{name}_z"] = np.asarray(sp.null_z(cols[name], cols[f"{name}_null_mean"], cols[f"{name}_null_std"], se))
    return cols


def head_laws(attn: dict, key: jax.Array, *, num_draws: int = 16) -> dict[str, np.ndarray]:
    """Statistics for a block of layers (see `_head_laws`)."""
    return _head_laws(attn, key, num_draws)[0]


def _head_laws(attn: dict, key: jax.Array, num_draws: int,
               storage: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Statistics for a block of layers, and the spectra behind the Q/K figures (`_kept`).

    Each matrix is decomposed once, its heads split over the local devices (`spectral.sharded`).
    Spectrum statistics get a Monte Carlo null drawn directly in singular values
    (`gaussian_spectrum_draws`: Gaussian matrices of the same shape, exact in law, far cheaper
    than drawing whole matrices), one set of draws per matrix shared by all its statistics, and
    pooled over the heads of a layer (`pool_null`): all query heads share one shape, so each
    head's null rests on `num_draws * H` draws (`num_draws * KV` for key and value heads). Each
    stand-in has exactly the head's Frobenius norm (its entry RMS), which only the statistics
    that depend on scale (`sigma_max`, `alpha`, `alpha_mse`) see. Singular-vector statistics get
    their exact nulls.

    Args:
      attn: canonical attention of the block: `q (n, H, D, E)`, `k`, `v (n, KV, D, E)`.
      key: PRNG key for the Monte Carlo nulls.
      num_draws: Monte Carlo draws per null.
      storage: `{matrix: storage type}` (`"attn.q"`: `"Q4_0"`, ...): the stand-ins of a matrix
        stored in a quantizable type are quantized the same way (`quantized.head_spectra`).
    Returns:
      `({column: (n, H)}, kept)`: every statistic, its null columns and `finite`; and `_kept`'s
      spectra of the block.
    """
    q, k, v = (np.asarray(attn[m]) for m in MATRICES)
    chex.assert_rank([q, k, v], 4)
    n, H, D, E = q.shape
    kv_of = sp.kv_head_index(H, k.shape[1])
    # Heads split over the local devices: on accelerators and hosts with several, and for the
    # Householder fallback (jaxlib's CPU QR uses one core per matrix) with one CPU device per core.
    by_heads = functools.partial(sp.sharded, axis=1)
    decomposed = {m: by_heads(sp.svd)(x) for m, x in (("q", q), ("k", k), ("v", v))}
    exact = sp.exact_pair_nulls((D, E))
    # One set of Gaussian stand-in spectra per matrix serves all six nulls (each null is still
    # exact in law; the q draws are shared by the qk, qv and q nulls).
    draws = {m: sp.unit_rms(s, D * E) for m, s in
             zip(MATRICES, sp.gaussian_spectrum_draws(key, q, k, v, num_draws=num_draws, match_scale=False))}
    draws.update({m: sp.unit_rms(s, D * E) for m, s in quantized.head_spectra(
        jax.random.fold_in(key, _QUANTIZED), {"q": q, "k": k, "v": v}, storage, num_draws=num_draws).items()})
    rms = {m: _rms(decomposed[m].s, D * E) for m in MATRICES}
    cols: dict[str, np.ndarray] = {}

    def add(tag: str, columns: dict[str, np.ndarray], per_kv_head: bool) -> None:
        cols.update({_name(c, tag): val[:, kv_of] if per_kv_head else val for c, val in columns.items()})

    for tag, a, b, per_kv in (("qk", "q", "k", False), ("qv", "q", "v", False), ("kv", "k", "v", True)):
        pair_spectra = sp.spectra_pair_statistics if per_kv else _GQA_SPECTRA
        pair_vectors = _vector_pair_statistics if per_kv else _GQA_VECTORS
        observed = {**pair_spectra(decomposed[a].s, decomposed[b].s), **pair_vectors(decomposed[a], decomposed[b])}
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero matrix: degenerate, blanked below
            alpha_scale = rms[a] / (rms[b] if per_kv else rms[b][:, kv_of])
        groups = np.arange(k.shape[1]) if per_kv else kv_of  # query heads reading one K/V head share its draw
        null, layer, mean_se = _pooled(sp.null_from_draws(pair_spectra, draws[a], draws[b]),
                                       {"alpha": alpha_scale, "alpha_mse": rms[a] ** 2}, groups)
        for name, one in exact.items():  # exact: no Monte Carlo error
            layer.update({f"{name}_layer_null_std": _independent_mean_std(one.std, groups, n),
                          f"{name}_layer_null_std_se": np.zeros(n), f"{name}_layer_null_mean_se": np.zeros(n)})
        add(tag, {**_columns(observed, {**null, **exact}, mean_se), **_layer_columns(layer, len(groups))}, per_kv)
    for m in MATRICES:
        observed = {s: v for s, v in sp.singular_value_statistics(decomposed[m].s).items() if s in _SPECTRUM}
        groups = np.arange(H if m == "q" else k.shape[1])
        null, layer, mean_se = _pooled(sp.null_from_draws(_spectrum_statistics, draws[m]), {"sigma_max": rms[m]}, groups)
        add(m, {**_columns(observed, null, mean_se), **_layer_columns(layer, len(groups))}, m != "q")
    finite = {m: np.isfinite(x.astype(np.float32, copy=False)).all(axis=(-2, -1)) for m, x in (("q", q), ("k", k), ("v", v))}
    cols["finite"] = (finite["q"] & finite["k"][:, kv_of] & finite["v"][:, kv_of]).astype(np.int64)
    per_head = {m: c if m == "q" else c[:, kv_of] for m, c in
                ((m, degeneracy(x, decomposed[m].s)) for m, x in (("q", q), ("k", k), ("v", v)))}
    _blank_undefined(cols, per_head)
    cols["degenerate"] = _describe_degeneracy(per_head)
    return cols, _kept(decomposed["q"].s, decomposed["k"].s, draws["q"], draws["k"])


_BAND = (2.5, 97.5)  # percentiles of the Gaussian band drawn behind the Q and K spectra


def _kept(s_q, s_k, draws_q: np.ndarray, draws_k: np.ndarray) -> dict[str, np.ndarray]:
    """What the Q/K figures draw of a block: `q_spectra (n, H, r)`, `k_spectra (n, KV, r)` (r =
    min(D, E)) and `null_band (n, 2, r)`, the 2.5th and 97.5th percentiles, index by index, of the
    unit-norm Gaussian spectra of the layer's q and k nulls (`(num_draws, n, heads, r)` each, pooled
    over draws and heads; NaN without draws)."""
    pooled = np.concatenate([np.asarray(draws_q, np.float64), np.asarray(draws_k, np.float64)], axis=2)
    r = pooled.shape[-1]
    if pooled.shape[0] == 0:
        band = np.full((pooled.shape[1], 2, r), np.nan)
    else:
        unit = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
        band = np.percentile(np.moveaxis(unit, 1, 0).reshape(pooled.shape[1], -1, r), _BAND, axis=1).swapaxes(0, 1)
    return {"q_spectra": np.asarray(s_q, np.float32), "k_spectra": np.asarray(s_k, np.float32),
            "null_band": band.astype(np.float32)}


def _rms(s: jax.Array, size: int) -> np.ndarray:
    """`(n, heads)` entry RMS, float64, of matrices of `size` entries from their singular values
    `s (n, heads, r)` (`|W|_F = |s|_2`): the scale of their Gaussian stand-ins, without another pass
    over the weights in float64 (a copy of 8 bytes per weight, 0.4 GB for a 14B layer's queries)."""
    s = np.asarray(s, np.float64)
    return np.sqrt(np.einsum("...r,...r->...", s, s) / size)


def _pooled(null: sp.NullSummary, scales: dict[str, np.ndarray], groups: np.ndarray
            ) -> tuple[dict[str, sp.NullSummary], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per statistic, the null of unit-variance stand-ins pooled over the heads (axis 1 of `(n,
    heads)`), times each head's scale factor for the statistics in `scales`; the null of each
    layer's mean over its heads, `(n,)` columns: `<stat>_layer_null_std` (`spectral.mean_null_std`:
    heads of one `groups` entry share a draw of their K/V head, so their means are correlated), its
    Monte Carlo error `_layer_null_std_se`, and `_layer_null_mean_se`, the Monte Carlo error of the
    layer mean's null mean (`layer_null_std / sqrt(N)`: the pooled mean is the mean of the N draws'
    layer means); and per statistic `(n, heads)` the Monte Carlo error of each head's pooled null
    mean, likewise the unit null's layer-mean std over sqrt(N) times the head's scale (treating the
    N x heads pooled draws as independent would understate it by up to sqrt(H / KV) where query
    heads share their K/V head's draw)."""
    pooled, layer, mean_se = {}, {}, {}
    for name, one in sp.split_null(null).items():
        scale = scales.get(name)
        pooled[name] = sp.pool_null(one, axis=1, scale=scale)
        unit = np.asarray(one.draws, np.float64)
        finite = np.maximum(np.sum(np.isfinite(np.nanmean(unit, axis=-1)), axis=0), 1)
        unit_se = sp.mean_null_std(unit, groups) / np.sqrt(finite)
        mean_se[name] = unit_se[:, None] * (1.0 if scale is None else np.abs(np.asarray(scale, np.float64)))
        draws = np.asarray(one.draws, np.float64) * (1.0 if scale is None else np.asarray(scale, np.float64))
        means = np.nanmean(draws, axis=-1)  # (N, n): each draw's layer mean
        std = sp.mean_null_std(draws, groups)
        layer[f"{name}_layer_null_std"] = std
        layer[f"{name}_layer_null_std_se"] = std * relative_std_error(means)
        layer[f"{name}_layer_null_mean_se"] = std / np.sqrt(np.maximum(np.sum(np.isfinite(means), axis=0), 1))
    return pooled, layer, mean_se


def _independent_mean_std(std, groups: np.ndarray, layers: int) -> np.ndarray:
    """Null std of a layer mean over independent heads: an exact null's per-head std over sqrt(heads).

    Singular vectors of Gaussian matrices are uniform and independent of everything else, so two
    query heads compared with one key head are independent under the null although they share it."""
    return np.broadcast_to(np.asarray(std, np.float64) / np.sqrt(len(groups)), (layers,))


def _layer_columns(layer: dict[str, np.ndarray], heads: int) -> dict[str, np.ndarray]:
    """The `(n,)` columns of a layer mean's null (`_layer_null_std`, `_layer_null_std_se`,
    `_layer_null_mean_se`) as `(n, heads)`: each layer's value repeated on its heads' rows."""
    return {name: np.repeat(np.reshape(np.asarray(value, np.float32), (-1, 1)), heads, axis=1) for name, value in layer.items()}


DEGENERACY = ("", "rank-deficient", "subnormal", "zero")
_VECTOR_STATISTICS = ("cos_u", "cos_v", "grassmann")


def degeneracy(x: npt.ArrayLike, s: npt.ArrayLike) -> np.ndarray:
    """Per matrix of `x (..., m, n)` with singular values `s (..., k)` (descending): an index into
    `DEGENERACY`: 0 full rank, 1 rank-deficient, 2 all entries subnormal in float32, 3 all zero."""
    amax = np.max(np.abs(np.asarray(x, np.float32)), axis=(-2, -1)).astype(np.float64)
    s = np.asarray(s, np.float64)
    low_rank = s[..., -1] <= s[..., 0] * max(np.shape(x)[-2:]) * np.finfo(np.float32).eps
    code = np.where(low_rank, 1, 0)
    code = np.where((amax > 0) & (amax < np.finfo(np.float32).tiny), 2, code)
    return np.where(amax == 0, 3, code)


def _blank_undefined(cols: dict[str, np.ndarray], per_head: dict[str, np.ndarray]) -> None:
    """NaN out (in place) each statistic that a zero, subnormal or rank-deficient matrix leaves undefined."""
    no_spectrum = {m: c >= 2 for m, c in per_head.items()}
    no_vectors = {m: c >= 1 for m, c in per_head.items()}
    for name in list(cols):
        stat, _, tag = _split_name(name)
        if tag in PAIRS:
            a, b = tag
            undefined = (no_vectors[a] | no_vectors[b]) if stat in _VECTOR_STATISTICS else (no_spectrum[a] | no_spectrum[b])
        elif tag in MATRICES:
            undefined = no_spectrum[tag]
        else:
            continue
        if undefined.any() and not name.endswith(("_null_mean", "_null_std", "_se")):  # the null itself stays defined
            cols[name] = np.where(undefined, np.nan, cols[name])


def _split_name(name: str) -> tuple[str, str, str]:
    """`pearson_qk_z` -> (`pearson`, `_z`, `qk`); names without a tag give an empty tag."""
    suffix = next((s for s in _SUFFIXES if name.endswith(s)), "")
    stem = name[: len(name) - len(suffix)]
    stat, _, tag = stem.rpartition("_")
    return (stat, suffix, tag) if tag in PAIRS + MATRICES else (stem, suffix, "")


def _describe_degeneracy(per_head: dict[str, np.ndarray]) -> np.ndarray:
    """`(n, H)` strings such as `"k zero; v rank-deficient"` (empty for a healthy head)."""
    parts = [np.where(c > 0, np.char.add(f"{m} ", np.asarray(DEGENERACY, dtype=str)[c]), "") for m, c in per_head.items()]
    joined = [["; ".join(p for p in cells if p) for cells in zip(*rows)] for rows in zip(*parts)]
    return np.array(joined, dtype=object).reshape(per_head["q"].shape)


def _spectrum_statistics(s) -> dict:
    stats = sp.singular_value_statistics(s)
    return {name: stats[name] for name in _SPECTRUM}


_SUFFIXES = ("_layer_null_std_se", "_layer_null_std", "_layer_null_mean_se", "_null_mean_se", "_null_std_se", "_null_mean", "_null_std", "_z",
             "_pct", "_diff", "_ratio")


def _name(column: str, tag: str) -> str:
    """`pearson_null_mean` + `qk` -> `pearson_qk_null_mean`: the tag goes after the statistic."""
    for suffix in _SUFFIXES:
        if column.endswith(suffix):
            return f"{column[: -len(suffix)]}_{tag}{suffix}"
    return f"{column}_{tag}"


def laws_layer(attn: dict, key: jax.Array, *, num_draws: int = 16) -> dict[str, np.ndarray]:
    """Rows for one unstacked layer's attention `q (H, D, E)`, `k`, `v (KV, D, E)`: one per query
    head, with `head`, `kv_head` and every statistic of `head_laws`."""
    return _block_rows(jax.tree.map(lambda x: np.asarray(x)[None], attn), key, num_draws)[0]


def _block_rows(attn: dict, key: jax.Array, num_draws: int,
                storage: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`laws_layer`'s rows from a one-layer block, leaves `(1, ...)` as `stream_layers` yields them,
    and the layer's `_kept` spectra (`q_spectra (H, r)`, `k_spectra (KV, r)`, `null_band (2, r)`)."""
    cols, kept = _head_laws(attn, key, num_draws, storage)
    H, KV = np.shape(attn["q"])[1], np.shape(attn["k"])[1]
    rows = {"head": np.arange(H), "kv_head": sp.kv_head_index(H, KV), **{name: value[0] for name, value in cols.items()}}
    return rows, {name: value[0] for name, value in kept.items()}


# ----------------------------------------------------------------------------- the analysis

HEADLINE = tuple(f"{s}_{p}" for p in PAIRS for s in ("pearson", "ssr", "cos_u", "cos_v", "grassmann"))
_Z_NOTABLE = 3.0
_ALIKE = {"pearson": 1, "ssr": -1, "cos_u": 1, "cos_v": 1, "grassmann": 1}  # which way means "more alike"


def _direction(stat: str, z: float) -> str:
    """A departure in words, relative to the laws' claim that the matrices are alike: `pearson_qk`
    below its null reads "less alike than random: against the claim"."""
    family, _, pair = stat.rpartition("_")
    sign = _ALIKE.get(family)
    if sign is None:
        return "above the random null" if z > 0 else "below the random null"
    more = sign * z > 0
    what = "spectra" if family in ("pearson", "ssr") else "singular vectors"
    return (f"{pair.upper()[0]} and {pair.upper()[1]} {what} {'more' if more else 'less'} alike than random matrices: "
            f"{'in the direction of' if more else 'against'} the claim that they are alike")


def _layer_rows(inputs: LayerInput, key: jax.Array, options: Options) -> LayerOutput:
    """Rows of one layer, and the Q and K spectra its statistics compared with their Gaussian
    band, kept for the figures of the heads picked in `summarize`."""
    return LayerOutput(*_block_rows(inputs.params["attn"], key, options.num_draws, inputs.storage))


@dataclasses.dataclass(frozen=True)
class LawsSummary:
    """The model-level findings of `laws`.

    `model`: per `HEADLINE` statistic, `model_values` (median and mean over layers, pseudo-bulk,
    null mean/std, mean z); `groups`: per layer group ("0-11"), SSR_qk, its null mean and
    Pearson_qk; `precision`: per floating format, the depth limits of `precision_table`;
    `nonfinite_heads` (layer, head) and `degenerate_heads` (layer, head, what); `pair_plots`: the
    figures of the Q and K spectra of the heads picked by their ssr_qk z, each beside its pick
    (layer, head, kv_head, why; the JSON lists them).
    Not in the JSON: the tables the report draws from.
    """

    model: Mapping[str, Mapping[str, float | None]]
    groups: Mapping[str, Mapping[str, object]]
    precision: Mapping[str, Mapping[str, object]]
    median_cond_qk: float | None
    nonfinite_heads: tuple[tuple[int, int], ...]
    degenerate_heads: tuple[tuple[int, int, str], ...]
    heads: Table = dataclasses.field(repr=False)
    precision_table: Table = dataclasses.field(repr=False)
    beyond: Mapping[str, str] = dataclasses.field(default_factory=dict)
    counterparts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pair_plots: tuple[tuple[Mapping[str, object], Plot], ...] = ()

    def to_json(self) -> dict:
        return {"model": dict(self.model), "groups": dict(self.groups), "precision": dict(self.precision),
                "median_cond_qk": self.median_cond_qk,
                "nonfinite_heads": [list(h) for h in self.nonfinite_heads],
                "degenerate_heads": [list(h) for h in self.degenerate_heads],
                "pair_plots": [{**pick, "file": f"plots/{plot.name}.png"} for pick, plot in self.pair_plots]}


def summarize(tables: Tables, spec, options: Options) -> LawsSummary:
    """`LawsSummary` of a run's per-head table."""
    heads = tables.heads
    per_layer = layer_means(heads, HEADLINE)
    mean_ssr = model_values(heads, per_layer, "ssr_qk")["mean_over_layers"]
    measured = np.concatenate([np.asarray(heads["cond_q"], float), np.asarray(heads["cond_k"], float)])
    precision = precision_table(mean_ssr if mean_ssr is not None else float("nan"), measured_kappa=measured)
    if getattr(spec, "model_type", None) in ENCODERS:  # the heuristic is about decoder depth
        precision = {c: v[:0] for c, v in precision.items()}
    groups = group_means(per_layer, HEADLINE, layer_groups(per_layer["layer"]))
    return LawsSummary(
        model={stat: model_values(heads, per_layer, stat) for stat in HEADLINE},
        groups={str(g): {s: json_value(groups[s][i]) for s in ("ssr_qk", "ssr_qk_null_mean", "pearson_qk")}
                for i, g in enumerate(groups["group"])},
        precision={str(f): {c: json_value(precision[c][i]) for c in precision if c != "format"}
                   for i, f in enumerate(precision["format"])},
        median_cond_qk=json_value(np.nanmedian(measured)),
        nonfinite_heads=tuple((int(l), int(h)) for l, h, f in zip(heads["layer"], heads["head"], heads["finite"]) if not f),
        degenerate_heads=tuple((int(l), int(h), str(d))
                               for l, h, d in zip(heads["layer"], heads["head"], heads["degenerate"]) if d),
        heads=heads, precision_table=precision, pair_plots=_pair_plots(tables),
        beyond=_beyond_every_draw(heads, options.num_draws),
        counterparts=_counterparts(heads),
    )


def _counterparts(heads: Table) -> dict[str, str]:
    """Per headline statistic, its invariant counterpart (`gauge.COUNTERPARTS`): "the statistic
    itself" when it is invariant, the counterpart's name and, when `charge` ran beside, its mean over
    layers; "none" where there is none."""
    out = {}
    for stat in HEADLINE:
        if gauge.invariance(stat) == "invariant":
            out[stat] = "itself"
            continue
        name = gauge.COUNTERPARTS.get(stat)
        if name is None:
            out[stat] = "none"
        elif name in heads and np.isfinite(np.asarray(heads[name], float)).any():
            out[stat] = f"{name} = {format_number(model_values(heads, layer_means(heads, [name]), name)['mean_over_layers'])}"
        else:
            out[stat] = f"{name} (`--analyses laws,charge`)"
    return out


def _beyond_every_draw(heads: Table, num_draws: int) -> dict[str, str]:
    """Per headline statistic with a Monte Carlo null: how many heads lie beyond every draw of their
    pooled null (`num_draws` per head of the layer sharing it: query heads for `_qk`, `_qv`, key
    heads for `_kv`), as "3 of 30 < 1/96 or > 1 - 1/96"."""
    layers = np.asarray(heads["layer"])
    out = {}
    for stat in HEADLINE:
        if f"{stat}_pct" not in heads:
            continue
        pct = np.asarray(heads[f"{stat}_pct"], float)
        sharing = {l: len(np.unique(np.asarray(heads["kv_head" if stat.endswith("_kv") else "head"])[layers == l]))
                   for l in np.unique(layers)}
        draws = min(sharing.values()) * num_draws
        count = int(np.sum((pct <= 0) | (pct >= 100)))
        out[stat] = (f"{count} of {int(np.sum(np.isfinite(pct)))} ({format_percentile(0, draws)} or "
                     f"{format_percentile(100, draws)})")
    return out


def _pair_plots(tables: Tables) -> tuple[tuple[dict, Plot], ...]:
    """`report.plots.qk_spectra` of the query head whose ssr_qk departs most from its null and of a
    typical one (median z): the Q and K spectra the statistic compared, with their Gaussian band."""
    heads = tables.heads
    z = np.asarray(heads["ssr_qk_z"], float)
    kept = tables.arrays.get("laws", {})
    if not np.isfinite(z).any() or not kept:
        return ()
    picks = {int(np.nanargmax(np.abs(z))): "largest |z| of ssr_qk"}
    picks.setdefault(int(np.nanargmin(np.abs(z - np.nanmedian(z)))), "median z of ssr_qk")
    plots = []
    for i, why in picks.items():
        layer, head, kv_head = (int(heads[c][i]) for c in ("layer", "head", "kv_head"))
        arrays = kept[layer]
        pick = {"layer": layer, "head": head, "kv_head": kv_head, "why": why}
        ssr, mean, std = (float(heads[c][i]) for c in ("ssr_qk", "ssr_qk_null_mean", "ssr_qk_null_std"))
        title = (f"layer {layer}: query head {head} and its key head {kv_head} ({why}); ssr_qk = "
                 f"{format_number(ssr)} against a null of {format_number(mean)} ± {format_number(std)}, z = {z[i]:.1f}")
        plots.append((pick, Plot("qk_spectra", f"qk_spectra_L{layer}_h{head}",
                                 (arrays["q_spectra"][head], arrays["k_spectra"][kv_head]),
                                 {"band": arrays["null_band"], "null": (mean, std), "title": title,
                                  "band_label": f"Gaussian spectra: {_BAND[0]:g}th to {_BAND[1]:g}th percentile",
                                  "labels": (f"W_Q head {head}", f"W_K head {kv_head}")})))
    return tuple(plots)


def render(summary: LawsSummary) -> Section:
    """The report's per-head section, z heatmaps and per-layer trends; for decoders the "third law"
    table as the report's appendix and `precision.csv`."""
    model = summary.model
    columns = (("statistic", None), ("median over layers", "median_over_layers"), ("mean over layers", "mean_over_layers"),
               ("pseudo-bulk", "pseudo_bulk"), ("null mean", "null_mean"), ("null std of the mean", "null_std"),
               ("difference", "diff"), ("ratio", "ratio"), ("z of the mean", "z"), ("mean per-head z", "mean_z"))
    rows: dict[str, list] = {column: [] for column, _ in columns}
    for stat, v in model.items():
        for column, key in columns:
            value = stat if key is None else v.get(key)
            rows[column].append(shown_z(v, key) if key in ("z", "mean_z") else value)
    rows["heads beyond every null draw"] = [summary.beyond.get(stat, "exact null") for stat in model]
    rows["gauge"] = [gauge.invariance(stat) for stat in model]
    rows["invariant counterpart"] = [summary.counterparts.get(stat, "none") for stat in model]
    lines = [
        "## Per-head statistics (laws)",
        "",
        "For every query head h and its key/value head g = h // (H/KV): the Pearson correlation and spectral "
        "shape residual (SSR) of the singular values of W_Q,h and W_K,g (`_qk`), of W_Q,h and W_V,g (`_qv`), and of "
        "W_K,g and W_V,g (`_kv`); the mean |cosine| of index-matched left (`cos_u`) and right (`cos_v`) singular "
        "vectors; and the Grassmann similarity of their row spaces. Spectrum statistics are set against "
        "Monte Carlo Gaussian spectra; cosine and Grassmann nulls are exact (E|cos| = Γ(d/2)/(√π Γ((d+1)/2)), "
        "Grassmann k/d). Aggregated as the five-laws source does (the README of the GitHub repository "
        "`emis-framework/math-under-llm`, \"LLM and LLM's laws\"): per-layer mean over heads, then median and mean over "
        "layers; pseudo-bulk = median over the query heads of each (layer, KV head), then median across groups. "
        "The null of the mean over layers is that of the mean itself: each layer mean's null std counts the "
        "correlation of query heads that share a key/value head, and layers are independent; its z is what "
        "says whether the model as a whole departs from random matrices. Difference and ratio are the mean "
        "over layers minus and over its null mean, the size of a departure that z only ranks; a z is shown "
        f"only where the null is resolved (std > 0 with a Monte Carlo error of at most {sp.RESOLVED_BOUND:.0%} "
        "of it; n/a otherwise). `gauge`: whether the statistic is a property of the attention function "
        "(`invariant`) or moves under the reparametrizations that leave it unchanged (`parametrization`: "
        "W_Q → A W_Q, W_K → A⁻ᵀ W_K with A commuting with RoPE; W_V → B W_V, W_O → W_O B⁻¹); the invariant "
        "counterpart is the same statistic at the balanced point of that orbit (the `charge` analysis).",
        "",
        list_markdown(rows),
        "",
        "Layer groups (four equal blocks of layers; `groups.csv` has every statistic):",
        "",
        list_markdown({"layers": list(summary.groups),
                   "ssr_qk": [g["ssr_qk"] for g in summary.groups.values()],
                   "ssr_qk null": [g["ssr_qk_null_mean"] for g in summary.groups.values()],
                   "pearson_qk": [g["pearson_qk"] for g in summary.groups.values()]}),
        "",
        "What stands out:",
        "",
    ]
    notable = [(s, v) for s, v in model.items()
               if shown_z(v) is not None and abs(v["z"]) > _Z_NOTABLE]
    if notable:
        lines += [f"- `{s}`: {_direction(s, v['z'])} (mean over layers {format_number(v['mean_over_layers'])} vs null "
                  f"{format_number(v['null_mean'])}, z = {v['z']:.1f} of the mean; difference "
                  f"{format_number(v['mean_over_layers'] - v['null_mean'])}, ratio "
                  f"{format_number(v['mean_over_layers'] / v['null_mean']) if v['null_mean'] else 'n/a'})."
                  for s, v in notable]
    else:
        lines.append(f"- No statistic's mean over layers departs from its random null by more than {_Z_NOTABLE:g} "
                     "standard deviations of that mean.")
    pearson = model.get("pearson_qk", {})
    if pearson.get("null_mean") and pearson["null_mean"] > 0.9:
        lines.append(f"- Pearson r of sorted Q/K spectra is {pearson['null_mean']:.3f} for random matrices already: "
                     "a value near 1 is not, by itself, evidence of structure.")
    if summary.nonfinite_heads:
        lines.append(f"- {len(summary.nonfinite_heads)} heads hold NaN/Inf weights (layer, head): "
                     f"{[list(h) for h in summary.nonfinite_heads[:10]]}; their statistics are NaN.")
    degenerate = summary.degenerate_heads
    if degenerate:
        shown = short_list((f"layer {l} head {h} ({what})" for l, h, what in degenerate), 10)
        lines.append(f"- {len(degenerate)} heads have a zero, subnormal or rank-deficient matrix: {shown}"
                     + "; the statistics these leave undefined are empty (`degenerate` column of `heads.csv`).")
    lines.append("")
    precision = summary.precision
    appendix = "" if not precision else "\n".join([
        "### The \"third law\" depth limits (laws; decoders)",
        "",
        "L_max = min(L_info = 1/mean SSR_qk, L_quant = 3·2^(2m), L_dyn = "
        "log2(max finite)/log2 κ), with κ = 2 as the five-laws source (`emis-framework/math-under-llm`) fixes it and with the median measured condition "
        f"number of the Q and K heads (κ = {format_number(summary.median_cond_qk)}); the formula is that source's heuristic, "
        "not a derived bound (`precision.csv`):",
        "",
        list_markdown({"format": list(precision),
                   **{c: [row[c] for row in precision.values()]
                      for c in ("mantissa_bits", "L_info", "L_quant", "L_dyn_fixed", "L_dyn_measured", "L_max_fixed",
                                "L_max_measured", "binding_measured")}}),
        "",
    ])
    if summary.pair_plots:
        shown = "; ".join(f"`plots/{plot.name}.png` ({pick['why']})" for pick, plot in summary.pair_plots)
        lines += [f"What ssr_qk compares, for the heads picked by its z: each Q and K spectrum divided by its "
                  f"norm, over the band of Gaussian spectra of that shape, and their difference index by index: "
                  f"{shown}.", ""]
    plots = []
    for stat in ("pearson_qk", "ssr_qk", "cos_u_qk"):
        plots.append(Plot("head_heatmap", f"heatmap_{stat}_z", (summary.heads, f"{stat}_z"),
                          {"title": f"{stat}: z-score against Gaussian null"}))
        plots.append(Plot("layer_trend", f"trend_{stat}", (summary.heads, stat),
                          {"title": f"{stat} per layer vs random null"}))
    tables = {"precision.csv": summary.precision_table} if precision else {}
    return Section("\n".join(lines), tables, tuple(plots) + tuple(plot for _, plot in summary.pair_plots), appendix=appendix)


analysis = Analysis(name="laws", table="heads", layer_rows=_layer_rows, summarize=summarize, render=render,
                    key_id=0, headline=HEADLINE, reads=("attn",))
