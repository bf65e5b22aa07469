"""Statistics of docs/statistics.md §1-§3 as pure functions over batched spectra and singular vectors.

Conventions: a spectrum `s` is `(..., n)` (descending where it matters), a set of vectors is
`(..., d, k)` with the vectors as columns, and every function reduces the trailing axes and
broadcasts the leading ones, so `(layers, heads, ...)` batches and GQA pairings (`gqa_pair`) work
directly. A statistic that is undefined for its input (a constant spectrum's correlation, an
all-zero matrix's effective rank) is NaN, never an exception; NaN inputs give NaN.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from spectrax.backend import jit
from spectrax.spectral._util import ShapeError, check_min_rank, common_float
from spectrax.spectral.decompose import matmul

__all__ = [
    "ScaleFit",
    "condition_number",
    "effective_rank",
    "grassmann",
    "max_mean",
    "mean_abs_cos",
    "pairwise_grassmann",
    "pearson",
    "projector_energy",
    "scale_fit",
    "sigma_max",
    "ssr",
    "stable_rank",
]


def _nan_like(x):
    return jnp.full((), jnp.nan, x.dtype)


def _pair(a, b, core: int):
    a, b = common_float(a, b)
    check_min_rank(a, core, "a")
    check_min_rank(b, core, "b")
    chex.assert_equal_shape_suffix([a, b], core, exception_type=ShapeError)
    return a, b


def _safe_div(num, den):
    """num / den, NaN where den == 0 (without a 0/0 in the forward or backward pass)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), _nan_like(num))


# ----------------------------------------------------------------------------- pairs of spectra


@jit
def pearson(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """Pearson correlation of two spectra along the last axis.

    a, b: `(..., n)`, broadcasting leading axes. Returns `(...)`; NaN if either is constant.
    Both spectra sorted descending makes this close to 1 even for unrelated Gaussian matrices:
    report it beside its Monte Carlo null.
    """
    a, b = _pair(a, b, 1)
    ac = a - jnp.mean(a, axis=-1, keepdims=True)
    bc = b - jnp.mean(b, axis=-1, keepdims=True)
    cov = jnp.sum(ac * bc, axis=-1)
    den = jnp.sqrt(jnp.sum(ac * ac, axis=-1)) * jnp.sqrt(jnp.sum(bc * bc, axis=-1))
    return _safe_div(cov, den)


@jit
def ssr(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """Spectral shape residual `mean_i |a_i / ||a||_2 - b_i / ||b||_2|`.

    a, b: `(..., n)`. Returns `(...)`; NaN if either spectrum is all zero.
    """
    a, b = _pair(a, b, 1)
    na = jnp.linalg.norm(a, axis=-1, keepdims=True)
    nb = jnp.linalg.norm(b, axis=-1, keepdims=True)
    return jnp.mean(jnp.abs(_safe_div(a, na) - _safe_div(b, nb)), axis=-1)


class ScaleFit(NamedTuple):
    """Least-squares scale `a ~ alpha * b`.

    alpha: `(...)` = <a, b> / <b, b>.
    mse: `(...)` mean squared residual `mean_i (a_i - alpha b_i)^2`.
    """

    alpha: jax.Array
    mse: jax.Array


@jit
def scale_fit(a: ArrayLike, b: ArrayLike) -> ScaleFit:
    """Least-squares `alpha` with `a ~ alpha * b` and its mean squared residual.

    a, b: `(..., n)`. Returns `ScaleFit(alpha (...), mse (...))`; NaN if `b` is all zero.
    """
    a, b = _pair(a, b, 1)
    alpha = _safe_div(jnp.sum(a * b, axis=-1), jnp.sum(b * b, axis=-1))
    mse = jnp.mean((a - alpha[..., None] * b) ** 2, axis=-1)
    return ScaleFit(alpha, mse)


# ----------------------------------------------------------------------------- singular vectors


@jit
def mean_abs_cos(x: ArrayLike, y: ArrayLike) -> jax.Array:
    """Index-matched mean absolute cosine `mean_i |<x_i, y_i>|` of unit columns.

    x, y: `(..., d, k)` unit vectors as columns (e.g. U `(..., D, D)` or V `(..., E, D)`).
    Returns `(...)`. Sign-free, so it does not depend on the SVD sign convention. Its exact null
    for independent uniform directions is `nulls.expected_abs_cos(d)`.
    """
    x, y = _pair(x, y, 2)
    return jnp.mean(jnp.abs(jnp.sum(x * y, axis=-2)), axis=-1)


@jit
def grassmann(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """Subspace similarity: mean of the squared singular values of `A^T B`.

    a: `(..., d, ka)`, b: `(..., d, kb)` orthonormal bases (columns). Equals
    `||A^T B||_F^2 / min(ka, kb)`, the mean squared cosine of the principal angles; in [0, 1],
    chance level `k / d` (`nulls.grassmann_chance`).
    """
    a, b = common_float(a, b)
    check_min_rank(a, 2, "a")
    check_min_rank(b, 2, "b")
    chex.assert_axis_dimension(b, -2, a.shape[-2], exception_type=ShapeError)  # bases of subspaces of one space
    c = matmul(jnp.swapaxes(a, -1, -2), b)
    return jnp.sum(c * c, axis=(-2, -1)) / min(a.shape[-1], b.shape[-1])


@jit
def pairwise_grassmann(bases: ArrayLike) -> jax.Array:
    """Similarity matrix of a stack of subspaces, e.g. layer x layer for one head.

    bases: `(..., n, d, k)` orthonormal bases. Returns `(..., n, n)` with ones on the diagonal.
    """
    check_min_rank(bases, 3, "bases")
    return grassmann(bases[..., :, None, :, :], bases[..., None, :, :, :])


@jit
def projector_energy(w: ArrayLike, basis: ArrayLike) -> jax.Array:
    """Fraction of `w`'s energy inside a subspace: `||W P||_F^2 / ||W||_F^2`, `P = B B^T`.

    w: `(..., F, E)`, e.g. the MLP gate `(ffn, hidden)`; basis: `(..., E, k)` orthonormal columns,
    e.g. a head's top-k QK-kernel vectors. Returns `(...)`, chance level `k / E`; NaN for `w == 0`.
    (docs/statistics.md §3: this is the quantity the source's code computed.)
    """
    w, basis = common_float(w, basis)
    check_min_rank(w, 2, "w")
    check_min_rank(basis, 2, "basis")
    chex.assert_axis_dimension(basis, -2, w.shape[-1], exception_type=ShapeError)  # the projected axis
    inside = jnp.sum(matmul(w, basis) ** 2, axis=(-2, -1))
    return _safe_div(inside, jnp.sum(w * w, axis=(-2, -1)))


# ----------------------------------------------------------------------------- one spectrum


def _spectrum(s):
    (s,) = common_float(s)
    check_min_rank(s, 1, "s")
    return s


@jit
def sigma_max(s: ArrayLike) -> jax.Array:
    """Largest singular value. s: `(..., n)` -> `(...)`."""
    return jnp.max(_spectrum(s), axis=-1)


@jit
def condition_number(s: ArrayLike, rtol: float = 1e-10) -> jax.Array:
    """`sigma_max / sigma_min` over the singular values above `rtol * sigma_max`.

    s: `(..., n)` -> `(...)`; NaN for an all-zero spectrum.
    """
    s = _spectrum(s)
    top = jnp.max(s, axis=-1, keepdims=True)
    kept = jnp.where(s > rtol * top, s, jnp.full((), jnp.inf, s.dtype))
    low = jnp.min(kept, axis=-1)
    return _safe_div(top[..., 0], jnp.where(jnp.isinf(low), 0.0, low))


@functools.partial(jit, static_argnames=("squared",))
def effective_rank(s: ArrayLike, squared: bool = False) -> jax.Array:
    """Roy-Vetterli effective rank `exp(-sum_i p_i ln p_i)`, `p = s / sum(s)`.

    s: `(..., n)` -> `(...)`, in `[1, number of nonzero s]`; NaN for an all-zero spectrum.
    squared: use `p = s^2 / sum(s^2)` instead (the energy-weighted variant; not the default of docs/statistics.md).
    """
    s = _spectrum(s)
    w = s * s if squared else s
    total = jnp.sum(w, axis=-1, keepdims=True)
    p = w / jnp.where(total > 0, total, 1.0)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    erank = jnp.exp(-jnp.sum(plogp, axis=-1))
    return jnp.where(total[..., 0] > 0, erank, _nan_like(erank))


@jit
def max_mean(s: ArrayLike) -> jax.Array:
    """`s_1 / mean(s)`. s: `(..., n)` -> `(...)`; NaN for an all-zero spectrum."""
    s = _spectrum(s)
    return _safe_div(jnp.max(s, axis=-1), jnp.mean(s, axis=-1))


@jit
def stable_rank(s: ArrayLike) -> jax.Array:
    """`sum_i s_i^2 / s_1^2`. s: `(..., n)` -> `(...)`; NaN for an all-zero spectrum."""
    s = _spectrum(s)
    return _safe_div(jnp.sum(s * s, axis=-1), jnp.max(s, axis=-1) ** 2)
