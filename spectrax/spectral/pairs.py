"""Bundled per-head statistics (docs/statistics.md §1-§2), ready to pass to the null models.

`gqa_pair_statistics(q, k)` computes every pair statistic of docs/statistics.md §1 for all (layer, head) pairs
in one jit-compiled call, and has the `stat_fn` signature `gaussian_null` and `shuffle_null`
expect, so an analysis needs three calls for a statistic with its null:

    obs = gqa_pair_statistics(q, k)                                   # {name: (L, H)}
    null = gaussian_null(key, gqa_pair_statistics, q, k, num_draws=32)
    cols = null_columns(obs, split_null(null))                        # + _null_mean/_std/_z/_pct

Statistics of spectra alone (`spectra_pair_statistics`, `singular_value_statistics`) can take the
much cheaper `gaussian_spectrum_null` instead.
"""

from __future__ import annotations

import functools

import jax
from jax.typing import ArrayLike

from spectrax.backend import jit
from spectrax.spectral import metrics
from spectrax.spectral.decompose import singular_values, svd
from spectrax.spectral._util import ShapeError
from spectrax.spectral.gqa import gqa_pair
from spectrax.spectral.nulls import NullSummary, cos_null, grassmann_null

__all__ = [
    "PAIR_STATISTICS",
    "SPECTRA_PAIR_STATISTICS",
    "SPECTRUM_STATISTICS",
    "exact_pair_nulls",
    "gqa_pair_statistics",
    "pair_statistics",
    "singular_value_statistics",
    "spectra_pair_statistics",
    "spectrum_statistics",
]

SPECTRA_PAIR_STATISTICS = ("pearson", "ssr", "alpha", "alpha_mse")
PAIR_STATISTICS = SPECTRA_PAIR_STATISTICS + ("cos_u", "cos_v", "grassmann")
SPECTRUM_STATISTICS = ("sigma_max", "cond", "erank", "erank_squared", "max_mean", "stable_rank")


@jit
def spectra_pair_statistics(sa: ArrayLike, sb: ArrayLike) -> dict[str, jax.Array]:
    """The spectrum-only part of `pair_statistics`, from singular values `sa`, `sb (..., k)`.

    Returns `{name: (...)}` for `SPECTRA_PAIR_STATISTICS` (pearson, ssr, alpha, alpha_mse); being a
    function of spectra, it is a valid `stat_fn` for the cheap `nulls.gaussian_spectrum_null`
    (wrap it in `gqa_pair` for GQA stacks).
    """
    fit = metrics.scale_fit(sa, sb)
    return {
        "pearson": metrics.pearson(sa, sb),
        "ssr": metrics.ssr(sa, sb),
        "alpha": fit.alpha,
        "alpha_mse": fit.mse,
    }


@functools.partial(jit, static_argnames=("grassmann_k", "method"))
def pair_statistics(a: ArrayLike, b: ArrayLike, grassmann_k: int | None = None, method: str = "cholqr") -> dict[str, jax.Array]:
    """docs/statistics.md §1 pair statistics of matrices `a` and `b`, `(..., D, E)`, leading axes broadcasting.

    Returns `{name: (...)}` for `PAIR_STATISTICS`: Pearson and SSR of the spectra, the scale fit
    `s_a ~ alpha s_b` with its mean squared residual, index-matched mean |cos| of the left (`cos_u`,
    dimension D) and right (`cos_v`, dimension E) singular vectors, and the Grassmann similarity
    of the top-`grassmann_k` right singular subspaces (default: all `min(D, E)`; with
    `grassmann_k = min(D, E) = D` and `D < E` it compares the full row spaces).
    """
    sa = svd(a, method=method)
    sb = svd(b, method=method)
    k = sa.s.shape[-1] if grassmann_k is None else grassmann_k
    return {
        **spectra_pair_statistics(sa.s, sb.s),
        "cos_u": metrics.mean_abs_cos(sa.u, sb.u),
        "cos_v": metrics.mean_abs_cos(sa.v, sb.v),
        "grassmann": metrics.grassmann(sa.v[..., :k], sb.v[..., :k]),
    }


@functools.partial(jit, static_argnames=("grassmann_k", "method"))
def gqa_pair_statistics(q: ArrayLike, kv: ArrayLike, grassmann_k: int | None = None,
                        method: str = "cholqr") -> dict[str, jax.Array]:
    """`pair_statistics` of every query head h with its KV head `g = h // (H // KV)`.

    q: `(..., H, D, E)`; kv: `(..., KV, D, E)`, e.g. `(layers, heads, head_dim, hidden)`. Each KV
    head is decomposed once per group, never copied. Returns `{name: (..., H)}`.
    """
    if q.ndim < 3 or q.ndim != kv.ndim:
        raise ShapeError(f"q {q.shape} and kv {kv.shape} must both be (..., heads, D, E)")
    fn = functools.partial(pair_statistics, grassmann_k=grassmann_k, method=method)
    return gqa_pair(fn, q, kv, axis=q.ndim - 3)


@jit
def singular_value_statistics(s: ArrayLike) -> dict[str, jax.Array]:
    """docs/statistics.md §1-§2 single-matrix statistics from singular values `s (..., k)`.

    Returns `{name: (...)}` for `SPECTRUM_STATISTICS`: sigma_max, condition number, effective rank
    (singular values) and its squared variant, max/mean and stable rank. Being a function of
    spectra, it is a valid `stat_fn` for the cheap `nulls.gaussian_spectrum_null`.
    """
    return {
        "sigma_max": metrics.sigma_max(s),
        "cond": metrics.condition_number(s),
        "erank": metrics.effective_rank(s),
        "erank_squared": metrics.effective_rank(s, squared=True),
        "max_mean": metrics.max_mean(s),
        "stable_rank": metrics.stable_rank(s),
    }


@functools.partial(jit, static_argnames=("method",))
def spectrum_statistics(w: ArrayLike, method: str = "cholqr") -> dict[str, jax.Array]:
    """`singular_value_statistics` of the matrices `w (..., m, n)`."""
    return singular_value_statistics(singular_values(w, method=method))


def exact_pair_nulls(shape: tuple[int, int], grassmann_k: int | None = None) -> dict[str, NullSummary]:
    """Exact nulls of the vector statistics of `pair_statistics` for `(m, n)` matrices.

    Returns `{"cos_u": ..., "cos_v": ..., "grassmann": ...}` as `NullSummary`s (no draws):
    `cos_u` in dimension m, `cos_v` in dimension n, each over `min(m, n)` index-matched pairs;
    `grassmann` for `grassmann_k` (default `min(m, n)`) dimensional subspaces of `R^n`.
    """
    m, n = (int(d) for d in shape[-2:])
    k = min(m, n)
    gk = k if grassmann_k is None else grassmann_k
    return {
        "cos_u": cos_null(m, k),
        "cos_v": cos_null(n, k),
        "grassmann": grassmann_null(gk, n),
    }
