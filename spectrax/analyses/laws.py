"""Per-head Q/K/V spectral statistics (docs/statistics.md §1), each beside its random-matrix null.

For every (layer, query head h) with its key/value head g = h // (H // KV):

- pair statistics of (W_Q,h, W_K,g) `_qk`, (W_Q,h, W_V,g) `_qv` and (W_K,g, W_V,g) `_kv`:
  pearson, ssr, alpha, alpha_mse (Monte Carlo null over the spectra of shape- and scale-matched
  Gaussian matrices), cos_u, cos_v, grassmann (exact nulls);
- single-matrix statistics of W_Q,h `_q`, W_K,g `_k`, W_V,g `_v`: sigma_max, cond, erank,
  stable_rank, max_mean (Monte Carlo null).

Each statistic X comes with `X_null_mean`, `X_null_std`, `X_z` (and `X_pct` for Monte Carlo
nulls). Heads holding NaN/Inf weights get NaN statistics and `finite = 0`; the run goes on.

Degenerate matrices are flagged per head in `degenerate` (e.g. `"k zero; v rank-deficient"`) and
their undefined statistics left empty (NaN): an all-zero matrix, or one whose entries are all
subnormal in float32 (flushed to zero by the kernels), has no spectrum to compare, so every
statistic involving it is undefined; a rank-deficient one (smallest singular value below
`max(D, E) * eps * sigma_max`, numpy's `matrix_rank` rule) has arbitrary singular vectors for
its zero singular values, so its `cos_u`, `cos_v` and `grassmann` are undefined.
"""

from __future__ import annotations

import functools

import chex
import jax
import numpy as np

from spectrax import spectral as sp

__all__ = ["DEGENERACY", "MATRICES", "PAIRS", "degeneracy", "head_laws", "laws_layer"]

PAIRS = ("qk", "qv", "kv")
MATRICES = ("q", "k", "v")
_SPECTRUM = ("sigma_max", "cond", "erank", "stable_rank", "max_mean")


def _vector_pair_statistics(a: sp.SVDResult, b: sp.SVDResult) -> dict:
    """Pair statistics of singular vectors (exact nulls), from thin SVDs batched alike."""
    return {"cos_u": sp.mean_abs_cos(a.u, b.u), "cos_v": sp.mean_abs_cos(a.v, b.v), "grassmann": sp.grassmann(a.v, b.v)}


# Module-level partials, so each null compiles once per shape (stat_fn is a static argument).
_GQA_SPECTRA = functools.partial(sp.gqa_pair, sp.spectra_pair_statistics, axis=1)
_GQA_VECTORS = functools.partial(sp.gqa_pair, _vector_pair_statistics, axis=1)


def _columns(observed: dict, nulls: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in sp.null_columns(observed, nulls).items()}


def head_laws(attn: dict, key: jax.Array, *, num_draws: int = 16) -> dict[str, np.ndarray]:
    """Statistics for a block of layers.

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
    Returns:
      `{column: (n, H)}` with every statistic, its null columns and `finite`.
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
    draws = {m: _unit_rms(s, D * E) for m, s in
             zip(MATRICES, sp.gaussian_spectrum_draws(key, q, k, v, num_draws=num_draws, match_scale=False))}
    rms = {m: _rms(x) for m, x in (("q", q), ("k", k), ("v", v))}
    cols: dict[str, np.ndarray] = {}

    def add(tag: str, columns: dict[str, np.ndarray], per_kv_head: bool) -> None:
        cols.update({_name(c, tag): val[:, kv_of] if per_kv_head else val for c, val in columns.items()})

    for tag, a, b, per_kv in (("qk", "q", "k", False), ("qv", "q", "v", False), ("kv", "k", "v", True)):
        pair_spectra = sp.spectra_pair_statistics if per_kv else _GQA_SPECTRA
        pair_vectors = _vector_pair_statistics if per_kv else _GQA_VECTORS
        observed = {**pair_spectra(decomposed[a].s, decomposed[b].s), **pair_vectors(decomposed[a], decomposed[b])}
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero matrix: degenerate, blanked below
            alpha_scale = rms[a] / (rms[b] if per_kv else rms[b][:, kv_of])
        null = _pooled(sp.null_from_draws(pair_spectra, draws[a], draws[b]),
                       {"alpha": alpha_scale, "alpha_mse": rms[a] ** 2})
        add(tag, _columns(observed, {**null, **exact}), per_kv)
    for m in MATRICES:
        observed = {s: v for s, v in sp.singular_value_statistics(decomposed[m].s).items() if s in _SPECTRUM}
        null = _pooled(sp.null_from_draws(_spectrum_statistics, draws[m]), {"sigma_max": rms[m]})
        add(m, _columns(observed, null), m != "q")
    finite = {m: np.isfinite(x.astype(np.float32)).all(axis=(-2, -1)) for m, x in (("q", q), ("k", k), ("v", v))}
    cols["finite"] = (finite["q"] & finite["k"][:, kv_of] & finite["v"][:, kv_of]).astype(np.int64)
    per_head = {m: c if m == "q" else c[:, kv_of] for m, c in
                ((m, degeneracy(x, decomposed[m].s)) for m, x in (("q", q), ("k", k), ("v", v)))}
    _blank_undefined(cols, per_head)
    cols["degenerate"] = _describe_degeneracy(per_head)
    return cols


def _rms(x: np.ndarray) -> np.ndarray:
    """RMS of each matrix of `x (n, heads, D, E)`, float64: the scale of its Gaussian stand-in."""
    return np.sqrt(np.mean(np.square(np.asarray(x, np.float64)), axis=(-2, -1)))


def _unit_rms(s, size: int) -> np.ndarray:
    """Spectra `s (..., k)` of stand-ins rescaled to an entry RMS of exactly 1 (`|s|_2 = sqrt(size)`).

    A head's null is then the Gaussian null *at its own Frobenius norm*: its RMS is known exactly,
    so a stand-in whose norm fluctuates would spread `sigma_max` or `alpha` wider than any
    observation can (in a calibration run their percentiles bunched in the middle)."""
    s = np.asarray(s, np.float64)
    return (s * np.sqrt(size) / np.linalg.norm(s, axis=-1, keepdims=True)).astype(np.float32)


def _pooled(null: sp.NullSummary, scales: dict[str, np.ndarray]) -> dict[str, sp.NullSummary]:
    """Per statistic, the null of unit-variance stand-ins pooled over the heads (axis 1 of `(n,
    heads)`), times each head's scale factor for the statistics in `scales`."""
    return {name: sp.pool_null(one, axis=1, scale=scales.get(name)) for name, one in sp.split_null(null).items()}


DEGENERACY = ("", "rank-deficient", "subnormal", "zero")
_VECTOR_STATISTICS = ("cos_u", "cos_v", "grassmann")


def degeneracy(x: np.ndarray, s) -> np.ndarray:
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
        if undefined.any() and not name.endswith(("_null_mean", "_null_std")):  # the null itself stays defined
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


_SUFFIXES = ("_null_mean", "_null_std", "_z", "_pct")


def _name(column: str, tag: str) -> str:
    """`pearson_null_mean` + `qk` -> `pearson_qk_null_mean`: the tag goes after the statistic."""
    for suffix in _SUFFIXES:
        if column.endswith(suffix):
            return f"{column[: -len(suffix)]}_{tag}{suffix}"
    return f"{column}_{tag}"


def laws_layer(attn: dict, key: jax.Array, *, num_draws: int = 16) -> dict[str, np.ndarray]:
    """Rows for one unstacked layer's attention `q (H, D, E)`, `k`, `v (KV, D, E)`: one per query
    head, with `head`, `kv_head` and every statistic of `head_laws`."""
    cols = head_laws(jax.tree.map(lambda x: np.asarray(x)[None], attn), key, num_draws=num_draws)
    H, KV = np.shape(attn["q"])[0], np.shape(attn["k"])[0]
    return {"head": np.arange(H), "kv_head": sp.kv_head_index(H, KV), **{name: value[0] for name, value in cols.items()}}
