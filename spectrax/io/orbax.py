"""Save and restore converted pytrees with orbax (absolute paths, restore against an abstract target)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

__all__ = ["save_params", "restore_params", "abstract_like"]

_META = "spectrax_meta.json"


def abstract_like(params: Any) -> Any:
    """The `jax.ShapeDtypeStruct` tree orbax restores into: same structure, shapes and dtypes."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), _dtype(x)), params)


def _dtype(x: Any) -> np.dtype:
    """An array's own dtype (numpy 2.4 deprecates `np.result_type(jax_array)`), else numpy's for scalars."""
    return x.dtype if hasattr(x, "dtype") else np.result_type(x)


def save_params(directory: str | os.PathLike, params: Any, meta: dict[str, Any] | None = None) -> str:
    """Write `params` (any pytree of arrays) to a new orbax checkpoint at `directory`.

    The directory must not exist (orbax writes to a temporary name and renames it when done,
    so a crash never leaves a half-written checkpoint under the final name). `meta` (JSON-able)
    is stored beside it. Returns the absolute path.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        raise FileExistsError(f"{directory} already exists; choose a new directory")
    import orbax.checkpoint as ocp  # heavy (tensorstore, asyncio machinery): loaded when first used

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, params)
        checkpointer.wait_until_finished()
    if meta is not None:
        with open(os.path.join(directory, _META), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, default=str)
    return directory


def restore_params(directory: str | os.PathLike, target: Any) -> tuple[Any, dict[str, Any] | None]:
    """Restore a pytree saved by `save_params` into the structure of `target`.

    `target` is a tree of arrays or `jax.ShapeDtypeStruct`s (see `abstract_like`); leaves come
    back with those shapes and dtypes (host numpy arrays for trees saved from `load`, which
    keeps weights on the host). Returns `(params, meta)`.
    """
    directory = os.path.abspath(os.fspath(directory))
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(directory, abstract_like(target))
    meta_path = os.path.join(directory, _META)
    meta = None
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    return params, meta
