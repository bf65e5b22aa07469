"""Spectra of low-rank products `A^T B` without forming them: QK kernels and OV circuits.

For `a (..., D, M)` and `b (..., D, N)` the product `A^T B` is `(M, N)` with rank <= D. With the
rows factored as `a = L_a Q_a` and `b = L_b Q_b` (`decompose.lq`: CholeskyQR2, or Householder QR
where that cannot be used; `Q` with orthonormal rows),

    A^T B = Q_a^T (L_a^T L_b) Q_b,

so the SVD of the small core `L_a^T L_b = U_c S V_c^T` gives the singular values `S` of the product
and its singular vectors `Q_a^T U_c` (left, the `a` side) and `Q_b^T V_c` (right, the `b` side).
Cost is two `(D, M)`/`(D, N)` factorizations and one `(D, D)` SVD; nothing `M x N` is ever built.

- QK kernel of query head h: `K_h = W_Q,h^T W_K,g`, `(E, E)`; bilinear form of the attention logit
  `x_query^T K_h x_key`, so left vectors live on the query side and right vectors on the key side.
- OV circuit of head h: `W_O,h W_V,g = o_h^T v_g` with the canonical `o (H, D, E)` (each head's
  block of the output projection, transposed); left vectors are the residual directions written
  (output side), right vectors the directions read (input side).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from spectrax.backend import jit
from spectrax.spectral._util import ShapeError, check_min_rank, common_float, swap_last
from spectrax.spectral.decompose import LQ, SVDResult, fix_signs, lq, matmul
from spectrax.spectral.gqa import gqa_pair

__all__ = [
    "OVCircuitSVD",
    "QKKernelSVD",
    "factored_singular_values",
    "factored_svd",
    "ov_circuit_svd",
    "qk_kernel_singular_values",
    "qk_kernel_svd",
]


class QKKernelSVD(NamedTuple):
    """Top singular triplets of the QK kernels `W_Q,h^T W_K,g`.

    s: `(..., H, r)` singular values, descending, `r = min(D, E)`.
    query: `(..., H, E, k)` left singular vectors (query side), columns.
    key: `(..., H, E, k)` right singular vectors (key side), columns.
    """

    s: jax.Array
    query: jax.Array
    key: jax.Array


class OVCircuitSVD(NamedTuple):
    """Top singular triplets of the OV circuits `W_O,h W_V,g`.

    s: `(..., H, r)` singular values, descending.
    output: `(..., H, E, k)` left singular vectors (residual directions written), columns.
    input: `(..., H, E, k)` right singular vectors (residual directions read), columns.
    """

    s: jax.Array
    output: jax.Array
    input: jax.Array



def _factors(a, b) -> tuple[LQ, LQ]:
    a, b = common_float(a, b)
    check_min_rank(a, 2, "a")
    check_min_rank(b, 2, "b")
    chex.assert_axis_dimension(b, -2, a.shape[-2], exception_type=ShapeError)  # the contracted axis
    return lq(a), lq(b)


def _core(fa: LQ, fb: LQ):
    """`(L_a^T L_b, ok)`, the core zeroed where either input holds NaN/Inf (its L is zero then)."""
    return matmul(swap_last(fa.l), fb.l), jnp.logical_and(fa.ok, fb.ok)


def _nan_where(ok, x, core_ndim):
    mask = ok.reshape(ok.shape + (1,) * core_ndim)
    return jnp.where(mask, x, jnp.full((), jnp.nan, x.dtype))


@jit
def factored_singular_values(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """Singular values of `A^T B`, never forming it.

    Args:
      a: `(..., D, M)`; b: `(..., D, N)`; leading axes broadcast against each other.

    Returns:
      `(..., min(D, M, N))` descending (the product has rank <= D); NaN where an input holds
      NaN/Inf.
    """
    core, ok = _core(*_factors(a, b))
    return _nan_where(ok, jnp.linalg.svd(core, full_matrices=False, compute_uv=False), 1)


@functools.partial(jit, static_argnames=("top_k",))
def factored_svd(a: ArrayLike, b: ArrayLike, top_k: int | None = None) -> SVDResult:
    """Singular values and top-k singular vectors of `A^T B`, never forming it.

    Args:
      a: `(..., D, M)`, b: `(..., D, N)`; leading axes broadcast, so a `b` with a unit axis where
        `a` has a head axis is factored once and paired with every head.
      top_k: number of leading singular vectors to return; `None` returns all `r`.

    Returns:
      `SVDResult(u (..., M, k), s (..., r), v (..., N, k))` with `r = min(D, M, N)` singular values
      (all of them, descending) and `k = top_k or r` vectors: `u` on the `a` side (left), `v` on
      the `b` side (right); signed so the largest-|entry| of each `u` column is positive.
    """
    fa, fb = _factors(a, b)
    core, ok = _core(fa, fb)
    uc, s, vch = jnp.linalg.svd(core, full_matrices=False)
    k = s.shape[-1] if top_k is None else top_k
    if not 0 < k <= s.shape[-1]:
        raise ValueError(f"top_k={top_k} must be in [1, {s.shape[-1]}]")
    # Q^T m = q1^T (t^T m): the (D, D) product first, then one pass over the long side
    left = matmul(swap_last(fa.q1), matmul(swap_last(fa.t), uc[..., :k]))
    right = matmul(swap_last(fb.q1), matmul(swap_last(fb.t), swap_last(vch)[..., :k]))
    left, right = fix_signs(left, right)
    return SVDResult(_nan_where(ok, left, 2), _nan_where(ok, s, 1), _nan_where(ok, right, 2))


def _check_heads(x, y, names):
    check_min_rank(x, 3, names[0])
    check_min_rank(y, 3, names[1])
    chex.assert_rank(y, x.ndim, exception_type=ShapeError)
    chex.assert_equal_shape_prefix([x, y], x.ndim - 3, exception_type=ShapeError)
    chex.assert_equal_shape_suffix([x, y], 2, exception_type=ShapeError)


def _factored_svd_k(top_k):
    return lambda a, b: factored_svd(a, b, top_k=top_k)


@functools.partial(jit, static_argnames=("top_k",))
def qk_kernel_svd(q: ArrayLike, k: ArrayLike, top_k: int | None = None) -> QKKernelSVD:
    """SVD of every head's QK kernel `W_Q,h^T W_K,g`, `g = h // (H // KV)`.

    Args:
      q: `(..., H, D, E)`, e.g. `(layers, heads, head_dim, hidden)`.
      k: `(..., KV, D, E)` with `H % KV == 0`; each K head is factored once per group.
      top_k: number of singular vectors per side; `None` returns all.

    Returns:
      `QKKernelSVD(s (..., H, r), query (..., H, E, k), key (..., H, E, k))`.
    """
    _check_heads(q, k, ("q", "k"))
    out = gqa_pair(_factored_svd_k(top_k), q, k, axis=q.ndim - 3)
    return QKKernelSVD(s=out.s, query=out.u, key=out.v)


@jit
def qk_kernel_singular_values(q: ArrayLike, k: ArrayLike) -> jax.Array:
    """Singular values `(..., H, r)` of every head's QK kernel; shapes as in `qk_kernel_svd`."""
    _check_heads(q, k, ("q", "k"))
    return gqa_pair(factored_singular_values, q, k, axis=q.ndim - 3)


@functools.partial(jit, static_argnames=("top_k",))
def ov_circuit_svd(o: ArrayLike, v: ArrayLike, top_k: int | None = None) -> OVCircuitSVD:
    """SVD of every head's OV circuit `W_O,h W_V,g = o_h^T v_g`.

    Args:
      o: `(..., H, D, E)` canonical output projection (head h's `(E, D)` block, transposed).
      v: `(..., KV, D, E)` value heads.
      top_k: number of singular vectors per side; `None` returns all.

    Returns:
      `OVCircuitSVD(s (..., H, r), output (..., H, E, k), input (..., H, E, k))`.
    """
    _check_heads(o, v, ("o", "v"))
    out = gqa_pair(_factored_svd_k(top_k), o, v, axis=o.ndim - 3)
    return OVCircuitSVD(s=out.s, output=out.u, input=out.v)
