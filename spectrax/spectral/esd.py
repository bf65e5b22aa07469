"""Empirical spectral densities of whole weight matrices (docs/statistics.md §2), WeightWatcher-style.

- `eigenvalues`: `lambda = s^2 / N`, `N = max(m, n)`, so a matrix with i.i.d. entries of variance
  `sigma2` has a Marchenko-Pastur ESD with ratio `min(m, n) / N` and scale `sigma2`.
- `mp_fit`: MP scale, bulk edges and the number of spikes (eigenvalues above the upper edge). For
  pure noise the largest eigenvalue fluctuates around the edge on the Tracy-Widom scale
  `~ N^{-2/3}`, so 0 or 1 "spike" is normal; pass `edge_margin` to demand a relative gap.
- `ks_mp`: Kolmogorov-Smirnov distance of the scale-normalized spectrum to the MP law of the same
  aspect ratio (analytic CDF). Scale-free, so it measures shape, not the weights' scale (the
  source's raw-singular-value KS mostly measured scale).
- `ks_gaussian`: two-sample KS distance between `s / mean(s)` and the same for shape-matched
  Gaussian matrices drawn with an explicit key.
- `powerlaw_fit`: tail exponent `alpha` of `p(x) ~ x^-alpha`, continuous maximum likelihood
  (Clauset, Shalizi & Newman 2009) with `x_min` chosen by minimum KS distance.

KS distances are invariant under monotone maps, so the distance computed on `lambda` equals the one
on `s`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spectrax.spectral._util import as_float, check_min_rank
from spectrax.spectral.decompose import singular_values
from spectrax.spectral.marchenko_pastur import aspect_ratio, fit_mp_scale, mp_cdf, mp_edges

__all__ = [
    "MPFit",
    "PowerLawFit",
    "eigenvalues",
    "ks_gaussian",
    "ks_mp",
    "ks_two_sample",
    "mp_fit",
    "powerlaw_fit",
]


def _shape2(shape) -> tuple[int, int]:
    shape = tuple(int(d) for d in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be the (m, n) of the matrices, got {shape}")
    return shape


def eigenvalues(s, shape) -> jax.Array:
    """`lambda = s^2 / max(m, n)` for singular values `s (..., k)` of `(m, n)` matrices."""
    m, n = _shape2(shape)
    s = as_float(s)
    return s * s / max(m, n)


class MPFit(NamedTuple):
    """Marchenko-Pastur fit of an ESD; every field `(...)`.

    sigma2: fitted entry variance. lambda_minus, lambda_plus: bulk edges.
    num_spikes: eigenvalues above `lambda_plus * (1 + edge_margin)` (int32; -1 flags a spectrum
      holding NaN/Inf, whose other fields are NaN).
    """

    sigma2: jax.Array
    lambda_minus: jax.Array
    lambda_plus: jax.Array
    num_spikes: jax.Array


@functools.partial(jax.jit, static_argnames=("shape", "method"))
def mp_fit(s, shape, method: str = "median", edge_margin: float = 0.0) -> MPFit:
    """Fits MP to the ESD of matrices of `shape = (m, n)` from their singular values.

    s: `(..., k)` singular values, `k = min(m, n)`. method: scale fit, `"median"` (robust to
    spikes, default) or `"mean"`; see `marchenko_pastur.fit_mp_scale`.
    """
    shape = _shape2(shape)
    lam = eigenvalues(s, shape)
    ratio = aspect_ratio(shape)
    sigma2 = fit_mp_scale(lam, ratio, method=method)
    lo, hi = mp_edges(ratio, sigma2, lam.dtype)
    spikes = jnp.sum(lam > (hi * (1.0 + edge_margin))[..., None], axis=-1).astype(jnp.int32)
    spikes = jnp.where(jnp.isfinite(sigma2) & jnp.all(jnp.isfinite(lam), axis=-1), spikes, -1)
    return MPFit(sigma2, lo, hi, spikes)


def _ks_one_sample(cdf_sorted):
    """KS distance from CDF values at the ascending sample points, `(..., n) -> (...)`."""
    n = cdf_sorted.shape[-1]
    i = jnp.arange(1, n + 1, dtype=cdf_sorted.dtype)
    above = jnp.max(i / n - cdf_sorted, axis=-1)
    below = jnp.max(cdf_sorted - (i - 1.0) / n, axis=-1)
    return jnp.maximum(above, below)


@functools.partial(jax.jit, static_argnames=("shape", "method"))
def ks_mp(s, shape, method: str = "median") -> jax.Array:
    """KS distance of the ESD to Marchenko-Pastur of the same aspect ratio, after a scale fit.

    s: `(..., k)` singular values of `(m, n)` matrices; method: MP scale fit (`"median"` or
    `"mean"`). Returns `(...)` in [0, 1]; ~`1/sqrt(k)` for Gaussian matrices.
    """
    shape = _shape2(shape)
    lam = eigenvalues(s, shape)
    ratio = aspect_ratio(shape)
    sigma2 = fit_mp_scale(lam, ratio, method=method)
    cdf = mp_cdf(jnp.sort(lam, axis=-1), ratio, sigma2[..., None])
    return _flag_nonfinite(s, _ks_one_sample(cdf))


def _flag_nonfinite(s, value):
    """NaN where the spectrum `s (..., k)` holds NaN/Inf."""
    ok = jnp.all(jnp.isfinite(s), axis=-1)
    return jnp.where(ok, value, jnp.full((), jnp.nan, value.dtype))


def _ks_two_1d(x, y):
    xs, ys = jnp.sort(x), jnp.sort(y)
    z = jnp.concatenate([xs, ys])
    fx = jnp.searchsorted(xs, z, side="right").astype(x.dtype) / x.shape[0]
    fy = jnp.searchsorted(ys, z, side="right").astype(x.dtype) / y.shape[0]
    return jnp.max(jnp.abs(fx - fy))


@jax.jit
def ks_two_sample(x, y) -> jax.Array:
    """Two-sample KS distance along the last axis. x: `(..., n)`, y: `(..., m)` -> `(...)`.

    NaN where either sample holds NaN/Inf.
    """
    x, y = as_float(x), as_float(y)
    y = y.astype(x.dtype)
    batch = jnp.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    x = jnp.broadcast_to(x, batch + x.shape[-1:]).reshape((-1, x.shape[-1]))
    y = jnp.broadcast_to(y, batch + y.shape[-1:]).reshape((-1, y.shape[-1]))
    d = jax.vmap(_ks_two_1d)(x, y)
    ok = jnp.all(jnp.isfinite(x), axis=-1) & jnp.all(jnp.isfinite(y), axis=-1)
    return jnp.where(ok, d, jnp.full((), jnp.nan, d.dtype)).reshape(batch)


@functools.partial(jax.jit, static_argnames=("shape", "num_draws", "method"))
def ks_gaussian(key, s, shape, num_draws: int = 1, method: str = "qr") -> jax.Array:
    """Two-sample KS distance of `s / mean(s)` to shape-matched Gaussian singular values.

    key: PRNG key; s: `(..., k)` singular values of `(m, n)` matrices. For each matrix,
    `num_draws` Gaussian `(m, n)` matrices are drawn, their singular values normalized by their
    own mean and pooled. Returns `(...)`.
    """
    shape = _shape2(shape)
    s = as_float(s)
    check_min_rank(s, 1, "s")
    g = jax.random.normal(key, s.shape[:-1] + (num_draws,) + shape, s.dtype)
    sg = singular_values(g, method=method)
    sg = sg / jnp.mean(sg, axis=-1, keepdims=True)
    pooled = sg.reshape(s.shape[:-1] + (-1,))
    d = ks_two_sample(s / jnp.mean(s, axis=-1, keepdims=True), pooled)
    return _flag_nonfinite(s, d)


class PowerLawFit(NamedTuple):
    """Power-law tail `p(x) ~ x^-alpha` for `x >= xmin`; every field `(...)`.

    alpha: MLE exponent. alpha_std: its asymptotic standard error `(alpha - 1) / sqrt(num_tail)`.
    xmin: selected lower cutoff. ks: KS distance of the tail to the fitted law at `xmin`.
    num_tail: number of samples `>= xmin` (int32).
    """

    alpha: jax.Array
    alpha_std: jax.Array
    xmin: jax.Array
    ks: jax.Array
    num_tail: jax.Array


def _candidates(n: int, min_tail: int, max_candidates: int | None) -> np.ndarray:
    last = n - min_tail
    if last < 0:
        raise ValueError(f"{n} samples are fewer than min_tail={min_tail}")
    idx = np.arange(last + 1)
    if max_candidates is not None and idx.size > max_candidates:
        idx = np.unique(np.round(np.linspace(0, last, max_candidates)).astype(np.int64))
    return idx


@functools.partial(jax.jit, static_argnames=("min_tail", "max_candidates", "chunk"))
def powerlaw_fit(x, min_tail: int = 10, max_candidates: int | None = None, chunk: int = 128) -> PowerLawFit:
    """Continuous power-law MLE with `x_min` by minimum KS distance (Clauset et al. 2009).

    x: `(..., n)` positive samples, e.g. `esd.eigenvalues(s, shape)`; non-positive values are never
      chosen as `x_min`. Every sample value leaving at least `min_tail` points in the tail is a
      candidate `x_min` (an exact search; `max_candidates` keeps that many, evenly spaced in rank,
      for a cheaper approximate one): `alpha = 1 + n_tail / sum(ln(x_i / x_min))` and the KS
      distance between the tail's empirical CDF and `1 - (x / x_min)^(1 - alpha)`; the candidate
      with the smallest distance wins. Candidates are scored `chunk` at a time, so memory is
      `(..., chunk, n)` whatever `n`.

    Returns `PowerLawFit` of `(...)` arrays; NaN fields (and `num_tail = 0`) where no candidate
    is valid or `x` holds NaN/Inf.
    """
    x = as_float(x)
    check_min_rank(x, 1, "x")
    n = x.shape[-1]
    cand = _candidates(n, min_tail, max_candidates)
    xs = jnp.sort(x, axis=-1)
    logs = jnp.log(jnp.where(xs > 0, xs, 1.0))
    suffix = jnp.flip(jnp.cumsum(jnp.flip(logs, -1), axis=-1), -1)
    i = jnp.arange(n)

    def score(j):  # one candidate index -> (alpha, ks) of shape (...)
        xmin, log_xmin = xs[..., j], logs[..., j]
        ntail = jnp.asarray(n - j, x.dtype)
        denom = suffix[..., j] - ntail * log_xmin           # sum ln(x_i / xmin) over the tail
        valid = (xmin > 0) & (denom > 0)
        alpha = 1.0 + ntail / jnp.where(valid, denom, 1.0)
        t = jnp.asarray(i - j, x.dtype)                      # rank within the tail
        model = 1.0 - jnp.exp((logs - log_xmin[..., None]) * (1.0 - alpha[..., None]))
        dist = jnp.maximum((t + 1.0) / ntail - model, model - t / ntail)
        ks = jnp.max(jnp.where(i >= j, dist, -jnp.inf), axis=-1)
        return alpha, jnp.where(valid, ks, jnp.inf)

    alpha, ks = jax.lax.map(score, jnp.asarray(cand), batch_size=min(chunk, cand.size))  # (C, ...)
    best = jnp.argmin(ks, axis=0)
    pick = lambda a: jnp.take_along_axis(a, best[None], axis=0)[0]  # noqa: E731
    ks_best = pick(ks)
    ok = jnp.isfinite(ks_best) & jnp.all(jnp.isfinite(x), axis=-1)
    nan = jnp.full((), jnp.nan, x.dtype)
    alpha_best = jnp.where(ok, pick(alpha), nan)
    j_best = jnp.asarray(cand)[best]
    n_best = jnp.asarray(n - j_best, jnp.int32)
    return PowerLawFit(
        alpha=alpha_best,
        alpha_std=(alpha_best - 1.0) / jnp.sqrt(n_best.astype(x.dtype)),
        xmin=jnp.where(ok, jnp.take_along_axis(xs, j_best[..., None], axis=-1)[..., 0], nan),
        ks=jnp.where(ok, ks_best, nan),
        num_tail=jnp.where(ok, n_best, 0),
    )
