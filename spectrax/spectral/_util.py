"""Private helpers shared by the spectral kernels: dtype policy and entry checks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = [
    "as_float",
    "check_min_rank",
    "common_float",
    "finfo_eps",
    "swap_last",
]

_LOW_PRECISION = (jnp.bfloat16, jnp.float16)


def as_float(x) -> jnp.ndarray:
    """Returns `x` as a jnp float array: bf16/f16 upcast to f32; f32/f64 kept.

    Integer, boolean and complex inputs are refused rather than guessed at.
    """
    x = jnp.asarray(x)
    if x.dtype in _LOW_PRECISION:
        return x.astype(jnp.float32)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"spectral kernels take real floating arrays, got {x.dtype}")
    return x


def common_float(*xs) -> tuple[jnp.ndarray, ...]:
    """`as_float` on each input, then casts all to the widest float among them.

    Explicit, so the kernels work under `jax_numpy_dtype_promotion="strict"`.
    """
    xs = tuple(as_float(x) for x in xs)
    dtype = np.result_type(*[x.dtype for x in xs])
    return tuple(x.astype(dtype) for x in xs)


def swap_last(x) -> jnp.ndarray:
    """Transposes the last two axes of a batch of matrices `(..., m, n) -> (..., n, m)`."""
    return jnp.swapaxes(x, -1, -2)


def check_min_rank(x, rank: int, name: str = "x") -> None:
    """Raises unless `x` has at least `rank` axes."""
    if x.ndim < rank:
        raise ValueError(f"{name} must have at least {rank} axes, got shape {x.shape}")


def finfo_eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)
