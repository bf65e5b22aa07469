"""Result folders: written atomically, resumable after an interruption, and never anything but
spectrax's own output replaced.

A run works in a hidden folder beside its destination, `<parent>/.<name>.partial/`, holding
`run.json` (the settings), `parts/` (one `.npz` per finished unit of work, e.g. a layer, each
written atomically) and `result/` (the files that will become `<name>`). The partial folder is
locked while a run uses it, so a second identical run is refused instead of racing the first.
When the run finishes, `result/` is renamed to `<name>` in one step, so a half-written result
never appears under the final name, and the partial folder is removed. If the run is interrupted
the partial folder stays; running again with the same settings picks up the finished parts
instead of recomputing them, and discards (naming it) any part that was damaged.

Every published folder holds a marker, `.spectrax-output.json`, listing the files spectrax wrote
there. Replacing an existing folder (`force`) is allowed only when that marker is present and the
folder holds nothing else, and never when a checkpoint being read lies inside it, so `--force` can
only ever delete what an earlier spectrax run wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Collection, Iterable, Iterator, Mapping

import numpy as np

from spectrax.analyses.tables import short_list

__all__ = [
    "MARKER",
    "RunFolder",
    "atomic_output_dir",
    "check_output_path",
    "checkpoint_fingerprint",
    "count_parts",
    "foreign_files",
    "partial_path",
    "replace_folder",
    "run_folder",
]

MARKER = ".spectrax-output.json"
_PARTIAL_ENTRIES = frozenset({"run.json", "run.json.tmp", "parts", "result"})


def _files_under(folder: str) -> list[str]:
    """Relative paths of every non-directory entry under `folder` (links are not followed)."""
    found = []
    for root, dirs, files in os.walk(folder):
        found += [os.path.relpath(os.path.join(root, f), folder) for f in files]
        found += [os.path.relpath(os.path.join(root, d), folder) for d in dirs if os.path.islink(os.path.join(root, d))]
    return sorted(found)


def foreign_files(folder: str | os.PathLike, written: Collection[str]) -> list[str]:
    """Files under `folder` (relative paths) that are not in `written`: what replacing it would lose."""
    return [f for f in _files_under(os.fspath(folder)) if f not in written]


def _marked_files(folder: str) -> set[str] | None:
    """The files spectrax's marker says it wrote into `folder`, or None without a readable marker."""
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, list) or not all(isinstance(x, str) for x in files):
        return None
    return {*files, MARKER}


def _check_replaceable(out: str) -> None:
    """Raise unless `out` is a folder an earlier spectrax run published and nobody added to."""
    written = _marked_files(out)
    if written is None:
        raise FileExistsError(f"{out} was not written by spectrax (it has no {MARKER}); "
                              "--force only replaces spectrax's own output folders, so choose another --out")
    extra = foreign_files(out, written)
    if extra:
        raise FileExistsError(f"{out} holds files spectrax did not write ({short_list(extra)}); "
                              "--force will not replace it, so choose another --out")


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _real(path: str) -> str:
    """`path` with its parent's links resolved (the last component is kept, link or not)."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def check_output_path(
    out: str | os.PathLike, *, checkpoints: Iterable[str | os.PathLike] = (), force: bool = False
) -> str:
    """The absolute output path, after every check that can be made before any work starts.

    Refused: a symbolic link (dangling or not) or a non-folder at `out`; an existing folder unless
    `force`, and with `force` one spectrax did not write or that holds files it did not write; an
    `out` inside a checkpoint being read or containing one; a parent that cannot be written.
    """
    out = os.path.abspath(os.fspath(out))
    if os.path.islink(out):
        raise ValueError(f"output folder {out} is a symbolic link; give the folder's own path")
    real_out = _real(out)
    for checkpoint in checkpoints:
        # A folder checkpoint is protected whole; a one-file checkpoint (a .gguf, a .safetensors
        # beside its config) only against being replaced: writing a new folder beside it is harmless.
        ckpt = os.path.realpath(os.fspath(checkpoint))
        if os.path.isdir(ckpt) and _inside(real_out, ckpt):
            raise ValueError(f"output folder {out} is inside the checkpoint {ckpt}; spectrax never writes there")
        if _inside(ckpt, real_out):
            raise ValueError(f"output folder {out} contains the checkpoint {ckpt} being read; "
                             "spectrax never replaces it, so choose another --out")
    if os.path.lexists(out):
        if not os.path.isdir(out):
            raise FileExistsError(f"output path {out} exists and is not a folder; spectrax will not replace it")
        if not force:
            raise FileExistsError(f"output folder {out} already exists; choose another, or --force to replace "
                                  "it (allowed only for a folder an earlier spectrax run wrote)")
        _check_replaceable(out)
    parent = os.path.dirname(out)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"output folder {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {out}: cannot write in {parent} (read-only or no permission)")
    return out


def checkpoint_fingerprint(files: list[str] | tuple[str, ...]) -> list[list]:
    """`[name, size, mtime_ns]` per file: enough to notice a checkpoint replaced under a resumed run."""
    return [[os.path.basename(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in sorted(files)]


def _write_marker(folder: str) -> None:
    from spectrax import __version__

    files = _files_under(folder)
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
        json.dump({"written_by": f"spectrax {__version__}", "files": files}, f, indent=1)


def replace_folder(new: str, out: str, *, written: Collection[str] | None = None) -> None:
    """Rename the folder `new` to `out`; an existing `out` is swapped out, then removed.

    An existing `out` must hold only files spectrax wrote: the relative paths in `written` if
    given, else those its marker lists. Checked again here because a run can take hours and the
    user may have put a file into the old folder meanwhile.
    """
    if os.path.lexists(out):
        if written is None:
            _check_replaceable(out)
        elif extra := foreign_files(out, written):
            raise FileExistsError(f"{out} holds files spectrax did not write ({short_list(extra)}); it will not replace it")
    if not os.path.lexists(out):
        os.rename(new, out)
        return
    trash = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rename(out, os.path.join(trash, "old"))
    os.rename(new, out)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(
    out: str | os.PathLike, *, checkpoints: Iterable[str | os.PathLike] = (), force: bool = False
) -> Iterator[str]:
    """Yield a fresh temporary folder beside `out`; publish it as `out` when the block succeeds.

    Raises as `check_output_path` does before the block runs. On an exception the temporary
    folder is removed.
    """
    out = check_output_path(out, checkpoints=checkpoints, force=force)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        yield tmp
        _write_marker(tmp)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def partial_path(out: str | os.PathLike) -> str:
    """Where a run that will publish `out` keeps its settings, finished parts and unpublished result."""
    out = os.path.abspath(os.fspath(out))
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.partial")


def count_parts(out: str | os.PathLike) -> int:
    """How many finished parts an interrupted run for `out` has kept (0 when there is none)."""
    parts = os.path.join(partial_path(out), "parts")
    return sum(p.endswith(".npz") and ".tmp" not in p for p in os.listdir(parts)) if os.path.isdir(parts) else 0


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The work folder of a resumable run: write result files into `path`, finished units into parts."""

    path: str  # becomes `out` when the run finishes
    out: str
    resumed: tuple[str, ...]  # parts found from an interrupted run with the same settings
    discarded: tuple[str, ...] = ()  # damaged parts removed at resume; they are recomputed

    def _part(self, name: str) -> str:
        return os.path.join(os.path.dirname(self.path), "parts", f"{name}.npz")

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
        return _read_part(self._part(name))


def _read_part(path: str) -> dict[str, dict[str, np.ndarray]]:
    # opened here, not by np.load: numpy leaves its own file open when the zip is torn
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
        out: dict[str, dict[str, np.ndarray]] = {}
        for key in data.files:
            group, _, column = key.partition("/")
            value = data[key]
            out.setdefault(group, {})[column] = value.astype(object) if value.dtype.kind == "U" else value
    return out


def _valid_parts(parts_dir: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(intact part names, damaged part names); damaged ones (and leftover temporaries) are deleted."""
    intact, damaged = [], []
    for entry in sorted(os.listdir(parts_dir)):
        path = os.path.join(parts_dir, entry)
        if not entry.endswith(".npz") or ".tmp" in entry:
            os.remove(path)
            continue
        try:
            _read_part(path)  # reads every array: zip CRCs and npy headers are checked
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile):
            os.remove(path)
            damaged.append(entry[: -len(".npz")])
        else:
            intact.append(entry[: -len(".npz")])
    return tuple(intact), tuple(damaged)


def _lock(root: str) -> int:
    """An exclusive lock on the partial folder, held by this process until it closes the returned fd."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FileExistsError(f"another spectrax run is writing {root}; wait for it to finish or stop it") from None
    if not os.path.samestat(os.fstat(fd), os.stat(root)):  # the other run published it while we waited
        os.close(fd)
        raise FileExistsError(f"another spectrax run just finished with {root}; run again to see its result")
    return fd


def _discardable(root: str) -> None:
    """Raise unless `root` holds only what a spectrax run puts in a partial folder."""
    extra = sorted(set(os.listdir(root)) - _PARTIAL_ENTRIES)
    if extra:
        raise FileExistsError(f"{root} holds files spectrax did not write ({short_list(extra)}); remove them or "
                              "choose another --out")


@contextlib.contextmanager
def run_folder(
    out: str | os.PathLike,
    *,
    settings: Mapping,
    checkpoints: Iterable[str | os.PathLike] = (),
    force: bool = False,
) -> Iterator[RunFolder]:
    """A resumable work folder for a run that will be published at `out`.

    `settings` (JSON-serializable: the checkpoint's fingerprint and every option that changes the
    results), together with the spectrax version that wrote the parts, decides whether an interrupted
    run may be resumed: the same settings resume it, other
    settings raise `FileExistsError` unless `force` discards it. `force` also allows replacing an
    existing `out` that an earlier spectrax run wrote, which happens only when the new run has
    finished. On success the folder's result is published as `out` and the partial folder removed;
    on failure it stays for the next attempt (or is removed when nothing was finished).
    """
    checkpoints = tuple(checkpoints)
    out = check_output_path(out, checkpoints=checkpoints, force=force)
    from spectrax import __version__

    # JSON round trip: the form the settings will have when read back.
    settings = json.loads(json.dumps({**settings, "spectrax": __version__}))
    root = partial_path(out)
    os.makedirs(root, exist_ok=True)
    fd = _lock(root)
    try:
        folder = _open(root, out, settings, force)
        try:
            yield folder
        except BaseException:
            if not os.listdir(os.path.join(root, "parts")):
                shutil.rmtree(root, ignore_errors=True)
            raise
        _write_marker(folder.path)
        replace_folder(folder.path, out)
        shutil.rmtree(root)
    finally:
        os.close(fd)


def _open(root: str, out: str, settings: dict, force: bool) -> RunFolder:
    """Resume the partial folder `root` if it holds a run with `settings`, else start it afresh."""
    _discardable(root)
    manifest, parts_dir, result = (os.path.join(root, n) for n in ("run.json", "parts", "result"))
    try:
        with open(manifest, encoding="utf-8") as f:
            previous = json.load(f)
    except FileNotFoundError:
        previous = None
    except (OSError, ValueError):
        previous = "unreadable"
    resumed: tuple[str, ...] = ()
    discarded: tuple[str, ...] = ()
    if previous == settings and os.path.isdir(parts_dir):
        resumed, discarded = _valid_parts(parts_dir)
    elif previous is not None and not force:
        changed = sorted(k for k in set(settings) | set(previous if isinstance(previous, dict) else {})
                         if not isinstance(previous, dict) or previous.get(k) != settings.get(k))
        raise FileExistsError(
            f"an interrupted run with other settings (differing in: {short_list(changed, 5)}) is in {root}; "
            "rerun with the same settings to resume it, or --force to discard it"
        )
    if previous != settings:  # a fresh start: nothing of another run may be resumed later
        shutil.rmtree(parts_dir, ignore_errors=True)
    shutil.rmtree(result, ignore_errors=True)  # tables are rewritten from the parts; never half of an old one
    os.makedirs(parts_dir, exist_ok=True)
    os.makedirs(result)
    if previous != settings:
        tmp = manifest + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=2)
        os.replace(tmp, manifest)
    return RunFolder(path=result, out=out, resumed=resumed, discarded=discarded)
