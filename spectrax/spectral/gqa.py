"""Grouped-query attention pairing: query head h goes with key/value head g = h // (H // KV).

K/V heads are never repeated in memory by the caller: the query-side arrays are reshaped
`(..., H, ...) -> (..., KV, H // KV, ...)`, the key-side arrays get a unit axis
`(..., KV, ...) -> (..., KV, 1, ...)`, and a function that broadcasts over leading axes sees each
KV head once per group. Work that depends on one side only (a QR or SVD of W_K) is then done once
per KV head, not once per query head.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from spectrax.spectral._util import ArrayTree, ShapeError

__all__ = [
    "gqa_pair",
    "group_size",
    "kv_head_index",
]


def kv_head_index(num_heads: int, num_kv_heads: int) -> np.ndarray:
    """`(H,)` integer array: the KV head of each query head, `h // (H // KV)`."""
    group = group_size(num_heads, num_kv_heads)
    return np.arange(num_heads) // group


def group_size(num_heads: int, num_kv_heads: int) -> int:
    """`H // KV`, refusing head counts that do not divide."""
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(
            f"{num_heads} query heads cannot be grouped over {num_kv_heads} key/value heads"
        )
    return num_heads // num_kv_heads


def _leaf_heads(tree, axis: int, name: str) -> int:
    counts = {leaf.shape[axis] for leaf in jax.tree.leaves(tree)}
    if len(counts) != 1:
        raise ShapeError(f"{name} leaves disagree on the head axis {axis}: sizes {sorted(counts)}")
    return counts.pop()


def gqa_pair(fn: Callable[[Any, Any], Any], q_side: ArrayTree, kv_side: ArrayTree, *, axis: int) -> Any:
    """Evaluates `fn(q_h, kv_g)` for every query head h and its KV head g, broadcasting.

    Args:
      fn: takes `(q_side', kv_side')` with the same pytree structures and returns a pytree; it must
        broadcast over leading axes (all spectrax kernels and metrics do).
      q_side: pytree of arrays `(*batch, H, ...)`, e.g. `s_q (layers, H, D)` or
        `q (layers, H, D, E)`; `axis = len(batch)` is the head axis counted from the front.
      kv_side: pytree of arrays `(*batch, KV, ...)` with the same head axis.
      axis: position of the head axis in every leaf (non-negative).

    Returns:
      `fn`'s output with its `(*batch, KV, H // KV, ...)` leading axes merged to `(*batch, H, ...)`
      (an output that depends on the KV side only, `(*batch, KV, 1, ...)`, is repeated per head).
    """
    if axis < 0:
        raise ValueError("axis counts from the front (the number of batch axes before heads)")
    num_heads = _leaf_heads(q_side, axis, "q_side")
    num_kv = _leaf_heads(kv_side, axis, "kv_side")
    group = group_size(num_heads, num_kv)

    def split(x):
        return x.reshape(x.shape[:axis] + (num_kv, group) + x.shape[axis + 1 :])

    def expand(x):
        return jnp.expand_dims(x, axis + 1)

    out = fn(jax.tree.map(split, q_side), jax.tree.map(expand, kv_side))

    def merge(y):
        if (
            y.ndim < axis + 2
            or y.shape[axis] != num_kv
            or y.shape[axis + 1] not in (1, group)
        ):
            raise ShapeError(
                f"fn output of shape {y.shape} does not keep the (KV, group) axes at {axis}"
            )
        y = jnp.broadcast_to(y, y.shape[:axis] + (num_kv, group) + y.shape[axis + 2 :])
        return y.reshape(y.shape[:axis] + (num_heads,) + y.shape[axis + 2 :])

    return jax.tree.map(merge, out)
