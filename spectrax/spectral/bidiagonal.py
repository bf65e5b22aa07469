"""Singular values of Gaussian matrices from chi-distributed bidiagonals, in O(k^2) per matrix.

Golub-Kahan bidiagonalization of an `(m, n)` matrix `G` of i.i.d. N(0, 1) entries, `m >= n`,
alternates Householder reflections from the left (zeroing a column below the diagonal) and the
right (zeroing a row right of the superdiagonal). Each reflection depends only on the column or
row it zeroes, and the Gaussian law is invariant under orthogonal maps, so what remains is again
i.i.d. Gaussian and independent of what was produced. The first column has norm `chi_m`, then the
rest of the first row `chi_{n-1}`, leaving an `(m-1, n-1)` Gaussian block; by induction `G` has
the singular values of the `(n, n)` upper bidiagonal with independent entries

    diagonal       chi_m, chi_{m-1}, ..., chi_{m-n+1}
    superdiagonal  chi_{n-1}, chi_{n-2}, ..., chi_1

(Dumitriu & Edelman, "Matrix models for beta ensembles", J. Math. Phys. 43 (2002), the
beta = 1 Laguerre model). A wide matrix has the singular values of its transpose, so in general,
with `k = min(m, n)` and `N = max(m, n)`: diagonal `chi_{N-i}`, off-diagonal `chi_{k-1-i}`
(`chi_degrees_of_freedom`). Drawing it costs `2k - 1` gamma variates instead of `m n` normals.

Singular values of the bidiagonal `B` (`bidiagonal_singular_values`): bisection on the Sturm
count of the `(2k, 2k)` Golub-Kahan matrix `[[0, B], [B^T, 0]]` (zero diagonal, off-diagonal
`d_1, e_1, d_2, ..., e_{k-1}, d_k` after a perfect shuffle), whose eigenvalues are `+-sigma_i`.
The count of eigenvalues below `x > 0` is `k + #{sigma_i < x}`, from the signs of the pivots
`q_1 = -x`, `q_{j+1} = -x - c_j^2 / q_j`: `2k - 1` steps for all `k` targets at once, a vector
operation per step. Demmel & Kahan ("Accurate singular values of bidiagonal matrices", SIAM J.
Sci. Stat. Comput. 11 (1990)) show this recurrence in floating point is exact for a bidiagonal
with entries perturbed by a few ulps, and a bidiagonal's singular values are determined to high
relative accuracy by its entries; bisecting on a geometric scale (midpoint `sqrt(lo hi)`) turns
that into relative accuracy for every singular value, the smallest included (measured against
float64 LAPACK: 7e-7 at k = 576 to 7e-6 at k = 5120 in float32, ~1e-14 in float64, where a dense
float32 SVD's error is `eps * sigma_max`, i.e. relative `eps * cond`). The squared form `B^T B` would square the
condition number, and LAPACK's dense `eigvalsh` of the tridiagonal is O(k^3).

The iteration count is fixed by the dtype (29 in float32, 61 in float64): the bracket starts at
`[sqrt(tiny), Gershgorin bound]` after scaling the entries by a power of two (exact) so the
largest is in [0.5, 1), and each iteration halves its logarithm. Total cost
`O(iterations * k^2)` flops in `O(iterations * k)` sequential steps, each vectorized over the
batch and the `k` targets.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike
import numpy as np

from spectrax.backend import jit
from spectrax.spectral._util import ShapeError, as_float, float_dtype

__all__ = [
    "Bidiagonal",
    "bidiagonal_singular_values",
    "chi_bidiagonal",
    "chi_degrees_of_freedom",
    "chi_variates",
    "gaussian_bidiagonal",
]


class Bidiagonal(NamedTuple):
    """An upper bidiagonal `(..., k, k)` matrix: `diag (..., k)` and superdiagonal `off (..., k-1)`."""

    diag: jax.Array
    off: jax.Array


def chi_degrees_of_freedom(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Degrees of freedom of the chi entries of the bidiagonal model of an `(m, n)` Gaussian matrix.

    Returns `(diag (k,), off (k-1,))` int arrays: `N - i` and `k - 1 - i` for `i = 0, 1, ...`, with
    `k = min(m, n)`, `N = max(m, n)`.
    """
    m, n = shape
    if min(m, n) < 1:
        raise ValueError(f"need a matrix shape with m, n >= 1, got {shape}")
    k, big = min(m, n), max(m, n)
    return big - np.arange(k), k - 1 - np.arange(k - 1)


def _gamma(key, alpha, shape: tuple[int, ...], dtype) -> jax.Array:
    """Independent Gamma(alpha) variates `shape` (alpha broadcast to it, alpha > 0), exactly in law.

    Marsaglia & Tsang, "A simple method for generating gamma variables", ACM TOMS 26 (2000):
    propose `d (1 + c x)^3` with `x ~ N(0, 1)`, `d = alpha - 1/3`, `c = 1 / sqrt(9 d)`, and accept by
    a squeeze-free log test (probability > 0.95 for alpha >= 1); every entry keeps its first
    accepted proposal, so rounds repeat only until all are accepted. alpha < 1 draws Gamma(alpha + 1)
    and multiplies by `U^(1/alpha)`. Written out because `jax.random.gamma` (a per-entry while loop
    with its own derivative rule) takes ~4 s to compile on CPU, which dominated every null's
    compile; this compiles in a fraction of that.
    """
    alpha = jnp.broadcast_to(jnp.asarray(alpha, dtype), shape)
    boost = alpha < 1
    d = jnp.where(boost, alpha + 1, alpha) - 1 / 3
    c = jax.lax.rsqrt(9 * d)

    # An entry is done once it holds its (positive) accepted value: whether it is done is read off
    # the value itself. A separate `done` flag set from the same test let XLA evaluate that test in
    # two fusions, which round a borderline case differently: flagged done with no value, an entry
    # came out 0 (about 1 in 60,000 chi variates of ~5,000 degrees of freedom, a zero singular value
    # in the Bartlett factor, and a pooled null hundreds of times too wide).
    def propose(state):
        key, value = state
        key, kx, ku = jax.random.split(key, 3)
        x = jax.random.normal(kx, shape, dtype)
        u = jax.random.uniform(ku, shape, dtype)
        v = (1 + c * x) ** 3
        safe_v = jnp.where(v > 0, v, 1)
        accept = (v > 0) & (jnp.log(u) < x * x / 2 + d - d * safe_v + d * jnp.log(safe_v)) & (value == 0)
        return key, jnp.where(accept, d * safe_v, value)

    key, k_boost = jax.random.split(key)
    _, value = jax.lax.while_loop(lambda state: jnp.any(state[1] == 0), propose, (key, jnp.zeros(shape, dtype)))
    u = jax.random.uniform(k_boost, shape, dtype, minval=jnp.finfo(dtype).tiny)
    return jnp.where(boost, value * u ** (1 / alpha), value)


def chi_variates(key: jax.Array, dof: ArrayLike, batch: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> jax.Array:
    """Independent chi variates `(*batch, d)` with degrees of freedom `dof (d,)` (> 0): sqrt(2 Gamma(dof/2))."""
    half = jnp.asarray(dof, dtype) / 2
    return jnp.sqrt(2 * _gamma(key, half, tuple(batch) + half.shape, dtype))


@functools.partial(jit, static_argnames=("batch", "dtype"))
def chi_bidiagonal(key: jax.Array, diag_dof: ArrayLike, off_dof: ArrayLike, batch: tuple[int, ...] = (),
                   dtype: DTypeLike = jnp.float32) -> Bidiagonal:
    """Bidiagonals `(*batch)` with independent entries `chi_{diag_dof[i]}` and `chi_{off_dof[i]}`.

    `diag_dof (k,)`, `off_dof (k-1,)`: degrees of freedom (traced, so one compile serves any values
    of a size); `chi_degrees_of_freedom(shape)` gives the law of a Gaussian matrix's singular
    values (`gaussian_bidiagonal`), other values other ensembles (the tests use that to show a
    wrong choice is caught). Returns `diag (*batch, k)`, `off (*batch, k-1)` in `dtype` (float32
    where float64 is unavailable, with a `Float64Unavailable` warning).
    """
    chex.assert_rank([diag_dof, off_dof], 1, exception_type=ShapeError)
    chex.assert_axis_dimension(off_dof, 0, diag_dof.shape[0] - 1, exception_type=ShapeError)
    dtype = float_dtype(dtype, "chi bidiagonals")
    kd, ko = jax.random.split(key)
    return Bidiagonal(chi_variates(kd, diag_dof, batch, dtype), chi_variates(ko, off_dof, batch, dtype))


def gaussian_bidiagonal(key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> Bidiagonal:
    """Chi bidiagonals whose singular values have the law of those of i.i.d. N(0, 1) matrices of
    `shape (..., m, n)`: `diag (..., k)`, `off (..., k-1)`, `k = min(m, n)`."""
    *batch, m, n = shape
    return chi_bidiagonal(key, *chi_degrees_of_freedom((m, n)), tuple(batch), dtype)


def _iterations(dtype) -> int:
    """Geometric bisection steps from `[sqrt(tiny), 2.5]` to a relative bracket of one ulp."""
    info = jnp.finfo(dtype)
    floor = math.sqrt(float(info.tiny))
    return math.ceil(math.log2(math.log(2.5 / floor) / float(info.eps)))


def _count_below(c2, x, pivmin):
    """`#{sigma_i < x}` for every target `x (..., k)`, from the GK pivots; `c2 (2k-1, ..., 1)`."""
    k = x.shape[-1]

    def step(carry, c2_j):
        q, neg = carry
        q = -x - c2_j / q
        small = q < pivmin           # a zero pivot counts as negative, as in LAPACK's dlaneg
        return (jnp.where(small, jnp.minimum(q, -pivmin), q), neg + small.astype(jnp.int32)), None

    first = (-x, jnp.ones(x.shape, jnp.int32))      # q_1 = -x < 0
    (_, neg), _ = jax.lax.scan(step, first, c2, unroll=4)
    return neg - k


@functools.partial(jit, work=lambda a: jnp.size(a["diag"]) * jnp.shape(a["diag"])[-1])
def bidiagonal_singular_values(diag: ArrayLike, off: ArrayLike) -> jax.Array:
    """Singular values of upper bidiagonal matrices, to high relative accuracy, in O(k^2) each.

    Args:
      diag: `(..., k)` diagonals; off: `(..., k-1)` superdiagonals (signs do not matter; a lower
        bidiagonal has the same singular values as its transpose).

    Returns:
      `(..., k)` singular values, descending. NaN for a matrix holding NaN/Inf; zeros for a zero
      matrix; singular values below `sqrt(tiny)` times the largest entry come back as that floor.
    """
    diag, off = as_float(diag), as_float(off)
    chex.assert_equal_shape_prefix([diag, off], diag.ndim - 1, exception_type=ShapeError)
    chex.assert_axis_dimension(off, -1, diag.shape[-1] - 1, exception_type=ShapeError)
    off = off.astype(diag.dtype)
    dtype, k = diag.dtype, diag.shape[-1]
    info = jnp.finfo(dtype)
    # Golub-Kahan off-diagonal d_1, e_1, d_2, ..., e_{k-1}, d_k
    pairs = jnp.stack([diag[..., :-1], off], axis=-1).reshape(diag.shape[:-1] + (2 * k - 2,))
    c = jnp.abs(jnp.concatenate([pairs, diag[..., -1:]], axis=-1))
    _, exponent = jnp.frexp(jnp.max(c, axis=-1, keepdims=True))
    c = jnp.ldexp(c, -exponent)                                     # exact: largest in [0.5, 1)
    pad = jnp.zeros_like(c[..., :1])
    gershgorin = jnp.max(jnp.concatenate([c, pad], -1) + jnp.concatenate([pad, c], -1), -1, keepdims=True)
    hi = jnp.broadcast_to(gershgorin * (1 + 4 * k * info.eps), diag.shape)  # <= 2.5 (the _iterations cap)
    lo = jnp.full(diag.shape, math.sqrt(float(info.tiny)), dtype)
    c2 = jnp.moveaxis(c * c, -1, 0)[..., None]                      # (2k-1, ..., 1): scanned
    target = jnp.arange(k, dtype=jnp.int32)                          # ascending order statistics
    pivmin = jnp.asarray(info.tiny, dtype)

    def bisect(_, bracket):
        lo, hi = bracket
        mid = jnp.sqrt(lo) * jnp.sqrt(hi)
        below = _count_below(c2, mid, pivmin) > target               # sigma_target < mid
        return jnp.where(below, lo, mid), jnp.where(below, mid, hi)

    lo, hi = jax.lax.fori_loop(0, _iterations(dtype), bisect, (lo, hi))
    s = jnp.ldexp(jnp.sqrt(lo) * jnp.sqrt(hi), exponent)[..., ::-1]
    finite = jnp.all(jnp.isfinite(diag), axis=-1, keepdims=True) & jnp.all(jnp.isfinite(off), axis=-1, keepdims=True)
    return jnp.where(finite, s, jnp.full((), jnp.nan, dtype))
