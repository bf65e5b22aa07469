"""Result folders: written atomically, resumable after an interruption, never inside a checkpoint.

A run works in a hidden folder beside its destination, `<parent>/.<name>.partial/`, holding
`run.json` (the settings) and `parts/` (one `.npz` per finished unit of work, e.g. a layer, each
written atomically). When the run finishes the parts are removed and the folder is renamed to
`<name>` in one step, so a half-written result never appears under the final name. If the run is
interrupted the partial folder stays; running again with the same settings picks up the finished
parts instead of recomputing them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping

import numpy as np

__all__ = ["RunFolder", "run_folder", "atomic_output_dir", "check_output_path", "checkpoint_fingerprint"]


def check_output_path(out: str | os.PathLike, *, checkpoint: str | os.PathLike | None, force: bool) -> str:
    """The absolute output path, after refusing an existing folder (unless `force`) and any path
    inside the checkpoint being read."""
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not force:
        raise FileExistsError(f"output folder {out} already exists; choose another, or force it to be replaced "
                              "(--force on the command line)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"output path {out} exists and is not a folder; spectrax will not replace it")
    if checkpoint is not None:
        ckpt = os.path.realpath(os.fspath(checkpoint))
        ckpt = ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt)
        real_out = os.path.join(os.path.realpath(os.path.dirname(out)), os.path.basename(out))
        if os.path.commonpath([real_out, ckpt]) == ckpt:
            raise ValueError(f"output folder {out} is inside the checkpoint {ckpt}; spectrax never writes there")
    return out


def checkpoint_fingerprint(files: list[str] | tuple[str, ...]) -> list[list]:
    """`[name, size, mtime_ns]` per file: enough to notice a checkpoint replaced under a resumed run."""
    return [[os.path.basename(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in sorted(files)]


def _publish(work: str, out: str) -> None:
    """Rename `work` to `out`; an existing `out` (allowed by `force`) is swapped out, then removed."""
    if not os.path.exists(out):
        os.rename(work, out)
        return
    trash = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rename(out, os.path.join(trash, "old"))
    os.rename(work, out)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(
    out: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None, force: bool = False
) -> Iterator[str]:
    """Yield a fresh temporary folder beside `out`; rename it to `out` when the block succeeds.

    Raises `FileExistsError` if `out` exists (unless `force`, which replaces it only on success)
    and `ValueError` if `out` lies inside `checkpoint`. On an exception the temporary folder is
    removed.
    """
    out = check_output_path(out, checkpoint=checkpoint, force=force)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        yield tmp
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The work folder of a resumable run: write result files into `path`, finished units into parts."""

    path: str
    out: str
    resumed: tuple[str, ...]  # parts found from an interrupted run with the same settings

    def _part(self, name: str) -> str:
        return os.path.join(self.path, "parts", f"{name}.npz")

    def has(self, name: str) -> bool:
        return os.path.exists(self._part(name))

    def save(self, name: str, arrays: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Store `{group: {column: array}}` as part `name`, atomically (a crash leaves no torn part)."""
        flat = {f"{group}/{column}": np.asarray(value) for group, columns in arrays.items()
                for column, value in columns.items()}
        for key, value in flat.items():
            if value.dtype == object:  # npz without pickle: strings become fixed-width unicode
                flat[key] = value.astype(str)
        tmp = self._part(name) + ".tmp.npz"
        np.savez(tmp, **flat)
        os.replace(tmp, self._part(name))

    def load(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        with np.load(self._part(name), allow_pickle=False) as data:
            out: dict[str, dict[str, np.ndarray]] = {}
            for key in data.files:
                group, _, column = key.partition("/")
                value = data[key]
                out.setdefault(group, {})[column] = value.astype(object) if value.dtype.kind == "U" else value
        return out


@contextlib.contextmanager
def run_folder(
    out: str | os.PathLike,
    *,
    settings: Mapping,
    checkpoint: str | os.PathLike | None = None,
    force: bool = False,
) -> Iterator[RunFolder]:
    """A resumable work folder for a run that will be published at `out`.

    `settings` (JSON-serializable: the checkpoint's fingerprint and every option that changes the
    results) decides whether an interrupted run may be resumed: the same settings resume it, other
    settings raise `FileExistsError` unless `force` discards it. `force` also allows replacing an
    existing `out`, which happens only when the new run has finished. On success the parts are
    deleted and the folder renamed to `out`; on failure it stays for the next attempt (or is
    removed when nothing was finished).
    """
    out = check_output_path(out, checkpoint=checkpoint, force=force)
    settings = json.loads(json.dumps(settings))  # the form it will have when read back
    work = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.partial")
    manifest = os.path.join(work, "run.json")
    resumed: tuple[str, ...] = ()
    if os.path.isdir(work):
        try:
            with open(manifest, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = None
        if previous == settings:
            parts_dir = os.path.join(work, "parts")
            parts = os.listdir(parts_dir) if os.path.isdir(parts_dir) else []
            resumed = tuple(sorted(p[: -len(".npz")] for p in parts if p.endswith(".npz") and ".tmp" not in p))
        elif force:
            shutil.rmtree(work)
        else:
            changed = sorted(k for k in set(settings) | set(previous or {}) if (previous or {}).get(k) != settings.get(k))
            raise FileExistsError(
                f"an interrupted run with other settings (differing in: {', '.join(changed)}) is in {work}; "
                "rerun with the same settings to resume it, or --force to discard it"
            )
    if not resumed:
        os.makedirs(os.path.join(work, "parts"), exist_ok=True)
        with open(manifest, "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=2)
    folder = RunFolder(path=work, out=out, resumed=resumed)
    try:
        yield folder
    except BaseException:
        if not os.listdir(os.path.join(work, "parts")):
            shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(os.path.join(work, "parts"))
    os.remove(manifest)
    _publish(work, out)
