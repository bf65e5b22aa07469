"""The Marchenko-Pastur law: density, analytic CDF, quantiles, bulk edges, scale fit.

Convention: `X` is `(p, n)` with i.i.d. entries of variance `sigma2`; the eigenvalues of
`X X^T / n` follow MP with ratio `y = p / n` and scale `sigma2`, supported on
`[sigma2 (1 - sqrt y)^2, sigma2 (1 + sqrt y)^2]` with mean `sigma2`.

- `y <= 1`: a continuous law; this is the case of a weight matrix `(m, n)` with
  `lambda = s^2 / max(m, n)` and `y = min(m, n) / max(m, n)` (see `esd.eigenvalues`).
- `y > 1`: `X X^T / n` has `p - n` zero eigenvalues. `mp_cdf` and `mp_quantile` include that point
  mass `1 - 1/y` at 0; `mp_density` is the density of the continuous part only, which integrates to
  `1/y`. To describe only the `n` nonzero eigenvalues, use ratio `1/y` and scale `sigma2 * y`
  (the nonzero eigenvalues of `X^T X / n`).

Everything broadcasts over `x`, `ratio` and `sigma2` and computes in the dtype of `x`
(float32 unless `x` is float64 and the backend computes float64; see `_util.float64_unavailable`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from spectrax.backend import jit
from spectrax.spectral._util import as_float, float_dtype

__all__ = [
    "aspect_ratio",
    "fit_mp_scale",
    "mp_cdf",
    "mp_density",
    "mp_edges",
    "mp_quantile",
    "singular_value_edges",
]


def aspect_ratio(shape: tuple[int, ...]) -> float:
    """`min(m, n) / max(m, n)` of a matrix shape `(m, n)` (the MP ratio of its spectrum)."""
    m, n = shape[-2:]
    return min(m, n) / max(m, n)


def _args(x, ratio, sigma2):
    x = as_float(x)
    return x, jnp.asarray(ratio, x.dtype), jnp.asarray(sigma2, x.dtype)


def _sqrt0(x):
    return jnp.sqrt(jnp.clip(x, 0.0))


def mp_edges(ratio: ArrayLike, sigma2: ArrayLike = 1.0, dtype: DTypeLike = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Bulk edges `(lambda_minus, lambda_plus) = sigma2 (1 -+ sqrt(ratio))^2`."""
    dtype = float_dtype(dtype, "MP edges")
    y = jnp.asarray(ratio, dtype)
    sig = jnp.asarray(sigma2, dtype)
    r = jnp.sqrt(y)
    return sig * (1.0 - r) ** 2, sig * (1.0 + r) ** 2


def singular_value_edges(shape: tuple[int, ...], sigma: ArrayLike = 1.0,
                         dtype: DTypeLike = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Bulk edges of the singular values of an `(m, n)` matrix with entry std `sigma`.

    `sigma (sqrt(max) -+ sqrt(min))`, i.e. `sqrt(max(m, n) * lambda_-+)`.
    """
    m, n = shape[-2:]
    big, small = math.sqrt(max(m, n)), math.sqrt(min(m, n))
    sig = jnp.asarray(sigma, float_dtype(dtype, "singular value edges"))
    return sig * (big - small), sig * (big + small)


@jit
def mp_density(x: ArrayLike, ratio: ArrayLike, sigma2: ArrayLike = 1.0) -> jax.Array:
    """Density of the continuous part of MP at `x` (zero outside the bulk).

    x: any shape. Integrates to `min(1, 1/ratio)`; see the module docstring for `ratio > 1`.
    """
    x, y, sig = _args(x, ratio, sigma2)
    lo, hi = mp_edges(y, sig, x.dtype)
    inside = (x > lo) & (x < hi)
    num = _sqrt0((hi - x) * (x - lo))
    den = 2.0 * jnp.pi * sig * y * jnp.where(inside, x, 1.0)
    return jnp.where(inside, num / den, 0.0)


@jit
def mp_cdf(x: ArrayLike, ratio: ArrayLike, sigma2: ArrayLike = 1.0) -> jax.Array:
    """Analytic CDF of MP at `x`, including the point mass `1 - 1/ratio` at 0 when `ratio > 1`.

    With `a, b` the edges for `sigma2 = 1`, `t = x / sigma2` clipped to `[a, b]` and
    `theta = 2 atan2(sqrt(t - a), sqrt(b - t))`:
    `F = [(1 + y) theta + sqrt((b - t)(t - a)) - 2 |1 - y| atan2(sqrt(b (t - a)), sqrt(a (b - t)))]
    / (2 pi y)`, exact and finite for every `y > 0` (including `y = 1`, where `a = 0`).
    """
    x, y, sig = _args(x, ratio, sigma2)
    a, b = mp_edges(y, 1.0, x.dtype)
    t = jnp.clip(x / sig, a, b)
    theta = 2.0 * jnp.arctan2(_sqrt0(t - a), _sqrt0(b - t))
    corr = jnp.arctan2(_sqrt0(b * (t - a)), _sqrt0(a * (b - t)))
    cont = ((1.0 + y) * theta + _sqrt0((b - t) * (t - a)) - 2.0 * jnp.abs(1.0 - y) * corr) / (
        2.0 * jnp.pi * y
    )
    mass0 = jnp.where(x >= 0, jnp.clip(1.0 - 1.0 / y, 0.0), 0.0)
    return jnp.clip(cont + mass0, 0.0, 1.0)


@functools.partial(jit, static_argnames=("num_iter",))
def mp_quantile(p: ArrayLike, ratio: ArrayLike, sigma2: ArrayLike = 1.0, num_iter: int = 60) -> jax.Array:
    """Smallest `x` with `mp_cdf(x) >= p`, by bisection on `[0, lambda_plus]`.

    p: any shape in [0, 1]. For `ratio > 1`, `p <= 1 - 1/ratio` maps to 0 (the point mass).
    `num_iter` halvings of the bulk width; 60 reaches float64 resolution.
    """
    p, y, sig = _args(p, ratio, sigma2)
    shape = jnp.broadcast_shapes(p.shape, y.shape, sig.shape)
    _, hi_edge = mp_edges(y, sig, p.dtype)
    lo = jnp.zeros(shape, p.dtype)
    hi = jnp.broadcast_to(hi_edge, shape)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = mp_cdf(mid, y, sig) >= p
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    _, hi = jax.lax.fori_loop(0, num_iter, body, (lo, hi))
    at_zero = mp_cdf(jnp.zeros((), p.dtype), y, sig) >= p
    return jnp.where(at_zero, jnp.zeros((), p.dtype), hi)


@functools.partial(jit, static_argnames=("method",))
def fit_mp_scale(eigenvalues: ArrayLike, ratio: ArrayLike, method: str = "median") -> jax.Array:
    """Fits the MP scale `sigma2` to a spectrum of eigenvalues, ratio <= 1.

    eigenvalues: `(..., n)`, e.g. `esd.eigenvalues(s, shape)`. Returns `(...)`.
    method: `"median"` (default): `median(lambda) / median_MP(ratio)`, barely moved by a few spikes;
      `"mean"`: `mean(lambda)` (the MP mean is `sigma2`), exact in expectation for pure noise but
      pulled up by spikes.
    """
    lam = as_float(eigenvalues)
    y = jnp.asarray(ratio, lam.dtype)
    if method == "median":
        return jnp.median(lam, axis=-1) / mp_quantile(jnp.asarray(0.5, lam.dtype), y)
    if method == "mean":
        return jnp.mean(lam, axis=-1)
    raise ValueError(f"unknown method {method!r}; expected 'median' or 'mean'")
