"""Result folders written atomically, never over an existing folder and never inside a checkpoint."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_output_dir"]


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None) -> Iterator[str]:
    """Yield a fresh temporary folder beside `out`; rename it to `out` when the block succeeds.

    Raises `FileExistsError` if `out` exists and `ValueError` if `out` lies inside `checkpoint`
    (results never touch the checkpoint being read). On an exception the temporary folder is
    removed, so a half-written result never appears under the final name.
    """
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out):
        raise FileExistsError(f"output folder {out} already exists; choose a new --out or remove it")
    if checkpoint is not None:
        ckpt = os.path.realpath(os.fspath(checkpoint))
        ckpt = ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt)
        real_out = os.path.join(os.path.realpath(os.path.dirname(out)), os.path.basename(out))
        if os.path.commonpath([real_out, ckpt]) == ckpt:
            raise ValueError(f"output folder {out} is inside the checkpoint {ckpt}; spectrax never writes there")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        yield tmp
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
