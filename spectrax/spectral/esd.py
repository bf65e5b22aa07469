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
  (Clauset, Shalizi & Newman 2009) with `x_min` chosen by minimum KS distance (the two-sided KS
  statistic, or WeightWatcher 0.7's variant of it).
- `mp_fit_weightwatcher`: WeightWatcher 0.7's MP fit (KDE residual over a grid of scales,
  Nelder-Mead polish, spikes beyond the bulk edge plus a Tracy-Widom margin).

KS distances are invariant under monotone maps, so the distance computed on `lambda` equals the one
on `s`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from spectrax.backend import jit
from spectrax.spectral._util import ShapeError, as_float, check_min_rank
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
    "mp_fit_weightwatcher",
    "powerlaw_fit",
    "WW_EVALS_FLOOR",
    "WWMPFit",
]

WW_EVALS_FLOOR = 1e-5  # WeightWatcher's EVALS_THRESH: eigenvalues s^2 at or below it are left out of its tail fit


def _shape2(shape) -> tuple[int, int]:
    shape = tuple(int(d) for d in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be the (m, n) of the matrices, got {shape}")
    return shape


def eigenvalues(s: ArrayLike, shape: tuple[int, ...]) -> jax.Array:
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


@functools.partial(jit, static_argnames=("shape", "method"))
def mp_fit(s: ArrayLike, shape: tuple[int, ...], method: str = "median", edge_margin: float = 0.0) -> MPFit:
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


@functools.partial(jit, static_argnames=("shape", "method"))
def ks_mp(s: ArrayLike, shape: tuple[int, ...], method: str = "median") -> jax.Array:
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


@jit
def ks_two_sample(x: ArrayLike, y: ArrayLike) -> jax.Array:
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


@functools.partial(jit, static_argnames=("shape", "num_draws", "method"),
                   work=lambda a: a["num_draws"] * math.prod(a["shape"]))
def ks_gaussian(key: jax.Array, s: ArrayLike, shape: tuple[int, ...], num_draws: int = 1,
                method: str = "qr") -> jax.Array:
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


_KS_RULES = ("two_sided", "weightwatcher")


@functools.partial(jit, static_argnames=("min_tail", "max_candidates", "chunk", "ks", "floor"),
                   work=lambda a: jnp.size(a["x"]) * jnp.shape(a["x"])[-1])
def powerlaw_fit(x: ArrayLike, min_tail: int = 10, max_candidates: int | None = None, chunk: int = 128,
                 ks: str = "two_sided", floor: float = 0.0) -> PowerLawFit:
    """Continuous power-law MLE with `x_min` by minimum KS distance (Clauset et al. 2009).

    x: `(..., n)` positive samples, e.g. `esd.eigenvalues(s, shape)`; values `<= floor` are never
      chosen as `x_min`. Every sample value leaving at least `min_tail` points in the tail is a
      candidate `x_min` (an exact search; `max_candidates` keeps that many, evenly spaced in rank,
      for a cheaper approximate one): `alpha = 1 + n_tail / sum(ln(x_i / x_min))` and the KS
      distance between the tail's empirical CDF and `F(x) = 1 - (x / x_min)^(1 - alpha)`; the
      candidate with the smallest distance wins (the lowest `x_min` on ties). Candidates are scored
      `chunk` at a time, so memory is `(..., chunk, n)` whatever `n`.
    ks: `"two_sided"`, the KS statistic `max_t max((t+1)/n - F, F - t/n)` over the tail's `n`
      points; or `"weightwatcher"`, WeightWatcher 0.7's `max_t |F - t/n|` (the empirical CDF just
      below each point only; 1 where `alpha <= 1`). With `min_tail=2, floor=WW_EVALS_FLOOR` on
      eigenvalues `s^2` this is WeightWatcher's default fit.

    Returns `PowerLawFit` of `(...)` arrays; NaN fields (and `num_tail = 0`) where no candidate
    is valid or `x` holds NaN/Inf.
    """
    if ks not in _KS_RULES:
        raise ValueError(f"ks must be one of {_KS_RULES}, got {ks!r}")
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
        valid = (xmin > max(floor, 0.0)) & (denom > 0)
        alpha = 1.0 + ntail / jnp.where(valid, denom, 1.0)
        t = jnp.asarray(i - j, x.dtype)                      # rank within the tail
        model = 1.0 - jnp.exp((logs - log_xmin[..., None]) * (1.0 - alpha[..., None]))
        if ks == "two_sided":
            dist = jnp.maximum((t + 1.0) / ntail - model, model - t / ntail)
        else:
            dist = jnp.abs(model - t / ntail)
        d = jnp.max(jnp.where(i >= j, dist, -jnp.inf), axis=-1)
        if ks == "weightwatcher":
            d = jnp.where(alpha > 1.0, d, 1.0)
        return alpha, jnp.where(valid, d, jnp.inf)

    alpha, dists = jax.lax.map(score, jnp.asarray(cand), batch_size=min(chunk, cand.size))  # (C, ...)
    best = jnp.argmin(dists, axis=0)
    pick = lambda a: jnp.take_along_axis(a, best[None], axis=0)[0]  # noqa: E731
    ks_best = pick(dists)
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


class WWMPFit(NamedTuple):
    """WeightWatcher 0.7's Marchenko-Pastur fit of an ESD; every field `(...)`.

    sigma: fitted MP scale of the ESD rescaled to mean 1 (WeightWatcher's `sigma_mp`).
    bulk_max: upper bulk edge in the units of the eigenvalues given (WeightWatcher's `bulk_max`).
    num_spikes: eigenvalues above `bulk_max` plus the Tracy-Widom margin (float; NaN for a spectrum
      holding NaN/Inf or all zero).
    mp_softrank: `bulk_max / lambda_max`.
    """

    sigma: jax.Array
    bulk_max: jax.Array
    num_spikes: jax.Array
    mp_softrank: jax.Array


_WW_BANDWIDTH = 0.1       # linear-kernel KDE bandwidth, in units of the mean eigenvalue
_WW_GRID = 1000           # KDE evaluation points on [0, max + 0.5]
_WW_DENSITY_FLOOR = 0.01  # grid points where the KDE is below this are left out of the residual
_WW_SIGMAS = 195          # brute-force scales sigma0 * (0.05, 0.06, ..., 1.99)
_NM_TOL = 1e-4            # Nelder-Mead's absolute tolerances on sigma and on the residual (scipy's fmin)
_NM_MAX = 200             # and its limit on iterations and on function calls


def _ww_residuals(sigmas, grid, kde, good, peak, top, ratio_q: float):
    """Squared density residual for each scale `sigmas (S,)` -> `(S,)`: MP (or, for square
    matrices, the quarter circle on singular values) against the KDE on the `good` grid points."""
    sig = sigmas[:, None]
    if ratio_q == 1.0:
        law = jnp.sqrt(jnp.clip(4.0 - grid * grid, 0.0)) / (jnp.pi * sig * sig)
        bad = jnp.zeros_like(sig, bool)
    else:
        y = 1.0 / ratio_q
        hi, lo = (sig * (1.0 + math.sqrt(y))) ** 2, (sig * (1.0 - math.sqrt(y))) ** 2
        inside = (grid > lo) & (grid < hi)
        safe = jnp.where(inside, grid, 1.0)
        law = jnp.where(inside, jnp.sqrt((hi - safe) * (safe - lo)) / (2 * jnp.pi * sig * sig * safe * y), 0.0)
        bad = (hi < peak) | (hi > top) | (lo > peak)
    resid = jnp.where(bad, 1000.0, law - kde)
    return jnp.sum(jnp.where(good, resid * resid, 0.0), axis=-1)


def _nelder_mead_1d(f, x0):
    """scipy.optimize.fmin's Nelder-Mead in one dimension from `x0` (initial simplex `x0, 1.05 x0`),
    as WeightWatcher polishes its grid optimum: reflection 1, expansion 2, contractions and shrink
    1/2, stopping when both the simplex and its values agree to `_NM_TOL`."""
    def order(s0, s1, f0, f1):
        swap = f1 < f0
        return jnp.where(swap, s1, s0), jnp.where(swap, s0, s1), jnp.where(swap, f1, f0), jnp.where(swap, f0, f1)

    def going(state):
        s0, s1, f0, f1, calls, iters = state
        converged = (jnp.abs(s1 - s0) <= _NM_TOL) & (jnp.abs(f1 - f0) <= _NM_TOL)
        return (calls < _NM_MAX) & (iters < _NM_MAX) & ~converged

    def step(state):
        s0, s1, f0, f1, calls, iters = state
        xr = 2.0 * s0 - s1
        fr = f(xr)
        xe = 3.0 * s0 - 2.0 * s1                 # expansion, tried when the reflection is the new best
        fe = f(xe)
        outside = fr < f1                        # contract towards the reflection, else towards s1
        xc = jnp.where(outside, 1.5 * s0 - 0.5 * s1, 0.5 * (s0 + s1))
        fc = f(xc)
        accept = jnp.where(outside, fc <= fr, fc < f1)
        xs = 0.5 * (s0 + s1)                     # shrink towards the best point
        fs = f(xs)
        expand = fr < f0
        new_x = jnp.where(expand, jnp.where(fe < fr, xe, xr), jnp.where(accept, xc, xs))
        new_f = jnp.where(expand, jnp.where(fe < fr, fe, fr), jnp.where(accept, fc, fs))
        calls = calls + jnp.where(expand | accept, 2, 3)
        return (*order(s0, new_x, f0, new_f), calls, iters + 1)

    x1 = 1.05 * x0
    state = (*order(x0, x1, f(x0), f(x1)), jnp.asarray(2), jnp.asarray(1))
    return jax.lax.while_loop(going, step, state)[0]


def _ww_fit_one(lam, ratio_q: float, m: int):
    """WeightWatcher's MP fit of one spectrum `lam (k,)` of eigenvalues `s^2` (or any multiple)."""
    dtype = lam.dtype
    scale = lam.shape[0] / jnp.sum(lam)                  # rescale to mean 1 (WeightWatcher's W_scale^2)
    x = lam * scale
    lmax = jnp.max(x)
    to_fit = jnp.sqrt(x) if ratio_q == 1.0 else x
    grid = jnp.linspace(0.0, jnp.max(to_fit) + 0.5, _WW_GRID, dtype=dtype)
    h = jnp.asarray(_WW_BANDWIDTH, dtype)
    kde = jnp.mean(jnp.clip(1.0 - jnp.abs(grid[:, None] - to_fit[None, :]) / h, 0.0), axis=1) / h
    good = kde > _WW_DENSITY_FLOOR
    peak = grid[jnp.argmax(jnp.where(good, kde, -1.0))]
    top = jnp.max(jnp.where(good, grid, -jnp.inf))
    residuals = functools.partial(_ww_residuals, grid=grid, kde=kde, good=good, peak=peak, top=top, ratio_q=ratio_q)
    sigma0 = jnp.sqrt(lmax) / (1.0 + 1.0 / math.sqrt(ratio_q))
    sigmas = sigma0 * (0.05 + 0.01 * jnp.arange(_WW_SIGMAS, dtype=dtype))
    sigma = sigmas[jnp.argmin(residuals(sigmas))]
    sigma = _nelder_mead_1d(lambda v: residuals(v[None])[0], sigma)
    bulk_max = (sigma * (1.0 + 1.0 / math.sqrt(ratio_q))) ** 2
    tracy_widom = bulk_max ** (2.0 / 3.0) * m ** (-2.0 / 3.0) / math.sqrt(ratio_q)
    spikes = jnp.sum(x > bulk_max + jnp.sqrt(tracy_widom)).astype(dtype)
    return sigma, bulk_max / scale, spikes, bulk_max / lmax


@functools.partial(jit, static_argnames=("shape",))
def mp_fit_weightwatcher(lam: ArrayLike, shape: tuple[int, ...]) -> WWMPFit:
    """WeightWatcher 0.7's Marchenko-Pastur fit (`analyze(mp_fit=True)`) of eigenvalues `lam (..., k)`.

    Its rule: rescale the spectrum to mean 1; estimate its density with a linear-kernel KDE
    (bandwidth 0.1) on 1000 points of `[0, max + 0.5]` (square matrices: of the singular values,
    against the quarter-circle law); choose the MP scale `sigma` minimizing the squared density
    residual over the points where the KDE exceeds 0.01, first on the grid `sigma0 * (0.05, 0.06,
    ..., 1.99)` with `sigma0` the scale that puts the upper edge at the largest eigenvalue, then
    polished by Nelder-Mead as scipy's `fmin` does; `bulk_max = (sigma (1 + 1/sqrt(Q)))^2`, `Q = N/M >= 1`; a spike
    is an eigenvalue above `bulk_max + sqrt(Q^-1/2 bulk_max^(2/3) M^(-2/3))` (its Tracy-Widom
    margin). `bulk_max` comes back in the units of `lam`.
    """
    m, n = _shape2(shape)
    lam = as_float(lam)
    chex.assert_axis_dimension(lam, -1, min(m, n), exception_type=ShapeError)
    ratio_q = max(m, n) / min(m, n)
    flat = lam.reshape((-1, lam.shape[-1]))
    out = jax.lax.map(functools.partial(_ww_fit_one, ratio_q=ratio_q, m=min(m, n)), flat)
    ok = jnp.all(jnp.isfinite(flat), axis=-1) & (jnp.sum(flat, axis=-1) > 0)
    nan = jnp.full((), jnp.nan, lam.dtype)
    return WWMPFit(*(jnp.where(ok, v, nan).reshape(lam.shape[:-1]) for v in out))
