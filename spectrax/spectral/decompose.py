"""Batched singular values and thin singular vectors of `(..., m, n)` matrices.

Three methods, chosen by the `method` argument (a static string):

- `"qr"` (default): QR of the matrix if tall, of its transpose if wide, then the SVD of the small
  `(k, k)` triangular factor, `k = min(m, n)`. Backward stable like a full SVD: absolute errors are
  `O(eps * sigma_max)`, so the relative error of sigma_i is `O(eps * cond_i)` with
  `cond_i = sigma_max / sigma_i`. Cheaper than a full SVD when one side is much longer.
- `"gram"`: eigenvalues of the `(k, k)` Gram matrix `x x^T` (wide) or `x^T x` (tall). Fastest, but
  squaring the matrix squares its condition number: the relative error of sigma_i is
  `O(eps * cond_i^2)`. In float32 (eps ~ 1.2e-7) a singular value 1e3 below the largest keeps about
  one digit and one 1e4 below is lost entirely; in float64 (eps ~ 2.2e-16) it is accurate to
  ~1e-8 relative at cond 1e4. Use it in float64, or for the top of the spectrum.
- `"svd"`: `jnp.linalg.svd(..., full_matrices=False)`, the reference.

Every method upcasts bf16/f16 inputs to float32, keeps float32/float64, and never allocates an
`n x n` factor of a wide matrix. A matrix holding NaN or Inf is not passed to LAPACK: its singular
values and vectors come back as NaN (the flag), and the other matrices of the batch are unaffected.
An all-zero matrix has all-zero singular values.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from spectrax.spectral._util import as_float, check_min_rank, swap_last

METHODS = ("qr", "gram", "svd")

_HIGHEST = jax.lax.Precision.HIGHEST


class SVDResult(NamedTuple):
    """Thin SVD `x = u @ diag(s) @ v^T`, singular values descending.

    u: `(..., m, k)` left singular vectors as columns.
    s: `(..., k)` singular values, descending, `k = min(m, n)`.
    v: `(..., n, k)` right singular vectors as columns (SPEC's V_A of shape `(E, D)`).
    """

    u: jax.Array
    s: jax.Array
    v: jax.Array



def matmul(a, b):
    """`a @ b` at full float32/float64 precision (no TF32/bf16 passes on GPU/TPU)."""
    return jnp.matmul(a, b, precision=_HIGHEST)


def fix_signs(u, v):
    """Flips each singular pair so the largest-|entry| of each column of `u` is positive.

    u: `(..., m, k)`, v: `(..., n, k)`; the product `u diag(s) v^T` is unchanged.
    """
    idx = jnp.argmax(jnp.abs(u), axis=-2)
    pick = jnp.take_along_axis(u, idx[..., None, :], axis=-2)
    sign = jnp.where(pick < 0, -1.0, 1.0).astype(u.dtype)
    return u * sign, v * sign


def _finite_guard(x):
    ok = jnp.all(jnp.isfinite(x), axis=(-2, -1))
    return jnp.where(ok[..., None, None], x, jnp.zeros((), x.dtype)), ok


def _flag(ok, value, core_ndim):
    mask = ok.reshape(ok.shape + (1,) * core_ndim)
    return jnp.where(mask, value, jnp.full((), jnp.nan, value.dtype))


def _gram(x):
    m, n = x.shape[-2:]
    return matmul(x, swap_last(x)) if m <= n else matmul(swap_last(x), x)


def _sv_core(x, method):
    m, n = x.shape[-2:]
    if method == "qr":
        a = swap_last(x) if m < n else x
        r = jnp.linalg.qr(a, mode="r")
        return jnp.linalg.svd(r, full_matrices=False, compute_uv=False)
    if method == "gram":
        w = jnp.linalg.eigvalsh(_gram(x))[..., ::-1]
        return jnp.sqrt(jnp.clip(w, 0.0))
    if method == "svd":
        return jnp.linalg.svd(x, full_matrices=False, compute_uv=False)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _safe_inverse(s):
    return jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0).astype(s.dtype)


def _svd_core(x, method):
    m, n = x.shape[-2:]
    if method == "qr":
        wide = m < n
        a = swap_last(x) if wide else x
        q, r = jnp.linalg.qr(a)
        ur, s, vrh = jnp.linalg.svd(r, full_matrices=False)
        left, right = matmul(q, ur), swap_last(vrh)
        u, v = (right, left) if wide else (left, right)
    elif method == "gram":
        w, e = jnp.linalg.eigh(_gram(x))
        s = jnp.sqrt(jnp.clip(w[..., ::-1], 0.0))
        e = e[..., ::-1]
        inv = _safe_inverse(s)[..., None, :]
        if m <= n:
            u, v = e, matmul(swap_last(x), e) * inv
        else:
            u, v = matmul(x, e) * inv, e
    elif method == "svd":
        u, s, vh = jnp.linalg.svd(x, full_matrices=False)
        v = swap_last(vh)
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    u, v = fix_signs(u, v)
    return SVDResult(u, s, v)


def _batched(fn, x, batch_size):
    """Applies `fn` over the leading axes of `x`, `batch_size` matrices at a time if given."""
    lead = x.shape[:-2]
    if batch_size is None or not lead:
        return fn(x)
    flat = x.reshape((-1,) + x.shape[-2:])
    out = jax.lax.map(fn, flat, batch_size=batch_size)
    return jax.tree.map(lambda y: y.reshape(lead + y.shape[1:]), out)


def _checked_input(x, method: str):
    """Upcast and validate `x (..., m, n)` and `method`; return it with its per-matrix finite flag."""
    x = as_float(x)
    check_min_rank(x, 2)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return _finite_guard(x)


@functools.partial(jax.jit, static_argnames=("method", "batch_size"))
def singular_values(x, method: str = "qr", batch_size: int | None = None) -> jax.Array:
    """Singular values of each matrix in a batch, descending.

    Args:
      x: `(..., m, n)`, e.g. `(layers, heads, head_dim, hidden)`; bf16/f16 are upcast to f32.
      method: `"qr"` (default), `"gram"` or `"svd"`; see the module docstring for accuracy.
      batch_size: if given, process the flattened leading axes this many matrices at a time
        (`jax.lax.map`), to bound memory; `None` handles the whole batch at once.

    Returns:
      `(..., min(m, n))`; NaN for matrices holding NaN/Inf.
    """
    x, ok = _checked_input(x, method)
    s = _batched(lambda y: _sv_core(y, method), x, batch_size)
    return _flag(ok, s, 1)


@functools.partial(jax.jit, static_argnames=("method", "batch_size"))
def svd(x, method: str = "qr", batch_size: int | None = None) -> SVDResult:
    """Thin SVD of each matrix in a batch, with a deterministic sign convention.

    Args:
      x: `(..., m, n)`; bf16/f16 are upcast to f32.
      method: `"qr"` (default), `"gram"` or `"svd"`. With `"gram"` the vectors of singular values
        near zero are inaccurate (and zero where sigma == 0).
      batch_size: as in `singular_values`.

    Returns:
      `SVDResult(u (..., m, k), s (..., k), v (..., n, k))`, `k = min(m, n)`, s descending; each
      column pair is signed so the largest-|entry| of the `u` column is positive. NaN for matrices
      holding NaN/Inf.
    """
    x, ok = _checked_input(x, method)
    out = _batched(lambda y: _svd_core(y, method), x, batch_size)
    return SVDResult(_flag(ok, out.u, 2), _flag(ok, out.s, 1), _flag(ok, out.v, 2))
