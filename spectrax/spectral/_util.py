"""Helpers shared by the spectral kernels: dtype policy (float64 where the backend has it) and entry checks.

float64 needs `jax_enable_x64` and a backend with float64 arithmetic (CPUs and GPUs; TPUs have
none). Where a kernel is asked for float64 that the process cannot compute (a float64 array under
x64 on a TPU, a `dtype=float64` argument with x64 off) it says so once per compiled shape with a
`Float64Unavailable` warning and computes in float32 instead; docs/spectral.md ("float64 and
accelerators") lists what each float32 method is accurate to. A numpy float64 array passed with
x64 off is already float32 when a kernel sees it (JAX converts every input then, silently), so
with x64 off every kernel is a float32 kernel.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ArrayTree",
    "Float64Unavailable",
    "ShapeError",
    "as_float",
    "check_min_rank",
    "common_float",
    "finfo_eps",
    "float64_unavailable",
    "float_dtype",
    "swap_last",
]

_LOW_PRECISION = (jnp.bfloat16, jnp.float16)

ArrayTree = Any
"""A pytree whose leaves are arrays (`chex.ArrayTree`, which `typing.get_type_hints` cannot resolve
outside chex)."""


class ShapeError(ValueError, AssertionError):
    """An array argument's shape is wrong (too few axes, or not matching another argument).

    The spectral kernels' one shape-check convention: at entry, before computing, each checks its
    arrays with chex assertions (`exception_type=ShapeError`) or `check_min_rank`, so a caller
    catching either `ValueError` or chex's `AssertionError` catches every shape error.
    """


class Float64Unavailable(UserWarning):
    """A kernel was asked for float64 that this process cannot compute and computes in float32."""


def float64_unavailable(platform: str | None = None) -> str | None:
    """Why float64 cannot be computed on `platform` (default: JAX's default backend), or None if it can.

    Returns `"jax_enable_x64 is off"` or `"TPUs have no float64 arithmetic"`.
    """
    if not jax.config.jax_enable_x64:
        return "jax_enable_x64 is off"
    if (platform or jax.default_backend()) == "tpu":
        return "TPUs have no float64 arithmetic"
    return None


def _fall_back(why: str, what: str) -> None:
    warnings.warn(f"{what} in float32: float64 was asked for but {why} (see 'float64 and accelerators' in "
                  "docs/spectral.md for the float32 methods' accuracy)", Float64Unavailable, stacklevel=3)


def float_dtype(dtype, what: str = "computing") -> np.dtype:
    """The floating dtype a kernel computes in when asked for `dtype`: float64 falls back to float32
    (with a `Float64Unavailable` warning) where `float64_unavailable()`."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        why = float64_unavailable()
        if why:
            _fall_back(why, what)
            return np.dtype(np.float32)
    return dtype


def as_float(x) -> jnp.ndarray:
    """Returns `x` as a jnp float array: bf16/f16 upcast to f32; f32 kept; f64 kept where the backend
    computes it, else f32 with a `Float64Unavailable` warning (x64 on a TPU).

    Integer, boolean and complex inputs are refused rather than guessed at.
    """
    x = jnp.asarray(x)
    if x.dtype in _LOW_PRECISION:
        return x.astype(jnp.float32)
    if x.dtype == jnp.float64 and float64_unavailable():
        _fall_back(float64_unavailable(), "computing")
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
    """Raises `ShapeError` unless `x` has at least `rank` axes."""
    if x.ndim < rank:
        raise ShapeError(f"{name} must have at least {rank} axes, got shape {x.shape}")


def finfo_eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)
