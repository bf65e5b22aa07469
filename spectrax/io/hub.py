"""Hugging Face Hub repo ids as checkpoints: `ORG/NAME` or `ORG/NAME@REVISION`.

Everything goes through `huggingface_hub` (no HTTP of spectrax's own), so its cache and its
settings apply: `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_TOKEN`, `HF_ENDPOINT`. It is
imported only when a repo id is opened and never at spectrax's import, because it reads those
variables when it is first imported.

Opening a repo reads `config.json`, the safetensors index and every weight file's header (range
requests for files not cached), pins the revision to its commit sha, and downloads nothing else.
A weight file is downloaded when a reader first asks for one of its tensors (`HubShards.local`).
With a disk budget, files go to a spectrax-owned folder instead of the Hugging Face cache and are
deleted once no planned read needs them (`HubShards.plan`), so a sharded model is analyzed shard
by shard in bounded disk; files already in the cache are read in place, count nothing and are
never deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from spectrax.io.checkpoint import INDEX_NAME, CheckpointFiles, read_config, read_index
from spectrax.io.errors import CheckpointError, UnsupportedCheckpointError
from spectrax.io.safetensors import TensorInfo, read_header

__all__ = ["HubShards", "open_hub", "parse_repo_id", "parse_size"]

_REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^\s@]+))?")
_SINGLE = "model.safetensors"
_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]?i?b?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_repo_id(ref: str | os.PathLike) -> tuple[str, str | None] | None:
    """`"ORG/NAME[@REVISION]"` -> `(repo_id, revision or None)`; `None` for an existing local path
    (which always wins) or anything not shaped like a repo id."""
    text = os.fspath(ref)
    if os.path.exists(text):
        return None
    match = _REPO_ID.fullmatch(text)
    return (match["repo"], match["revision"]) if match else None


def parse_size(size: int | str) -> int:
    """Bytes from an int or text such as `"20GB"`, `"500MiB"`, `"1.5T"` (GB = 10^9, GiB = 2^30)."""
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.fullmatch(size.strip())
        if not match:
            raise ValueError(f"disk budget {size!r} is not a size; use e.g. 20GB, 500MiB or a number of bytes")
        unit = match["unit"].lower().removesuffix("b")
        value = int(float(match["number"]) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"disk budget {size!r} must be positive")
    return value


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


class HubShards:
    """The weight files of one Hub checkpoint at one commit, downloaded when a reader asks for them.

    `local(named)` returns the tensors with every file on local disk; with a `budget` (bytes), the
    files it downloads live in `scratch` and those no planned read needs are deleted first.
    """

    def __init__(self, ref: str, repo_id: str, revision: str | None, sha: str, *, sizes: Mapping[str, int | None],
                 headers: dict[str, Mapping[str, TensorInfo]], cached: set[str], budget: int | None, scratch: str | None):
        self.ref, self.repo_id, self.revision, self.sha = ref, repo_id, revision, sha
        self.budget, self.scratch = budget, scratch
        self._sizes = dict(sizes)
        self._headers = headers  # file -> tensors; local files' entries are read from the file itself
        self._cached = cached  # files read in place from the Hugging Face cache: never deleted
        self._plan: list[frozenset[str]] | None = None  # None: the coming reads are unknown

    def describe(self) -> dict[str, Any]:
        """`{"repo", "revision", "sha"}`: what `summary.json` records."""
        return {"repo": self.repo_id, "revision": self.revision, "sha": self.sha}

    def held(self) -> dict[str, int]:
        """Files this object downloaded under a budget and still keeps, with their sizes."""
        if self.scratch is None or not os.path.isdir(self.scratch):
            return {}
        return {os.path.join(self.scratch, n): os.path.getsize(os.path.join(self.scratch, n))
                for n in os.listdir(self.scratch) if n.endswith(".safetensors")}

    def plan(self, units: Sequence[Mapping[str, TensorInfo]]) -> None:
        """Announce the coming reads, in order (each a layer's or the globals' tensors), so that a
        budgeted download keeps exactly the files a later read needs. Refuses, before downloading
        anything, a read whose files alone exceed the budget."""
        self._plan = [frozenset(i.file for i in named.values()) for named in units]
        for need in dict.fromkeys(self._plan):
            self._check_fits(need)

    def local(self, named: Mapping[str, TensorInfo]) -> dict[str, TensorInfo]:
        """`named` with each tensor's location in its downloaded file (downloading it now if needed)."""
        need = frozenset(info.file for info in named.values())
        if self._plan and self._plan[0] == need:
            self._plan.pop(0)
        if self.budget is not None:
            self._make_room(need)
        for file in sorted(need):
            if not os.path.exists(file):
                self._download(file)
        out = {}
        for rel, info in named.items():
            real = self._headers[info.file].get(info.name)
            if real is None or (real.dtype, real.shape, real.nbytes) != (info.dtype, info.shape, info.nbytes):
                raise CheckpointError(f"{info.file}: tensor {info.name!r} differs from the header {self.ref} "
                                      "served before the download (file changed on the Hub?)")
            out[rel] = real
        return out

    def release(self) -> None:
        """Delete the files no planned read needs (every downloaded one once the plan is done)."""
        if self.budget is not None and self._plan is not None:
            later = frozenset().union(*self._plan)
            for file in set(self.held()) - later:
                self._delete(file)
            if not self._plan and self.scratch and os.path.isdir(self.scratch) and not self.held():
                shutil.rmtree(self.scratch, ignore_errors=True)
                for parent in (os.path.dirname(self.scratch), os.path.dirname(os.path.dirname(self.scratch))):
                    with contextlib.suppress(OSError):  # only while empty: another repo's run may be using it
                        os.rmdir(parent)

    def _size(self, file: str) -> int:
        if os.path.exists(file):
            return os.path.getsize(file)
        return self._sizes.get(os.path.basename(file)) or 0

    def _check_fits(self, need: frozenset[str]) -> None:
        new = [f for f in need if f not in self._cached]
        total = sum(self._size(f) for f in new)
        if self.budget is not None and total > self.budget:
            raise CheckpointError(
                f"{self.ref}: reading one layer (or the embeddings and output head) needs "
                f"{', '.join(sorted(os.path.basename(f) for f in new))} on disk at once "
                f"({_human(total)}), more than the disk budget of {_human(self.budget)}; raise --disk-budget")

    def _make_room(self, need: frozenset[str]) -> None:
        self._check_fits(need)
        held = self.held()
        later = frozenset().union(*self._plan) if self._plan is not None else frozenset(held)
        for file in set(held) - need - later:  # no planned read needs it
            self._delete(file)
            del held[file]
        missing = sum(self._size(f) for f in need if f not in held and f not in self._cached)
        while sum(held.values()) + missing > self.budget:
            # Evict the file whose next use is farthest away (Belady), to be fetched again then.
            victims = [f for f in held if f not in need]
            victim = max(victims, key=self._next_use)
            self._delete(victim)
            del held[victim]

    def _next_use(self, file: str) -> int:
        return next((i for i, need in enumerate(self._plan or ()) if file in need), len(self._plan or ()) + 1)

    def _delete(self, file: str) -> None:
        if self.scratch is None or os.path.dirname(file) != self.scratch:
            raise AssertionError(f"refusing to delete {file}: not downloaded under a disk budget")
        os.remove(file)

    def _download(self, file: str) -> None:
        from huggingface_hub import hf_hub_download

        name = os.path.basename(file)
        local_dir = self.scratch if self.budget is not None else None
        path = _hub_call(self.ref, self.repo_id, self.revision, name,
                         lambda: hf_hub_download(self.repo_id, name, revision=self.sha, local_dir=local_dir))
        if os.path.abspath(path) != os.path.abspath(file):
            raise CheckpointError(f"{self.ref}: {name} was downloaded to {path}, expected {file}")
        self._headers[file] = read_header(file).tensors


def open_hub(ref: str, repo_id: str, revision: str | None, *, disk_budget: int | str | None = None) -> tuple[CheckpointFiles, HubShards]:
    """Resolve a repo id to a commit and index its weights: config, index and headers, no tensor data.

    Returns the `CheckpointFiles` (its `path` is the snapshot folder in the Hugging Face cache;
    each tensor's `file` is where its file is or will be on disk) and the `HubShards` that
    downloads them. Every failure is a `CheckpointError` of one line naming `ref`.
    """
    try:
        from huggingface_hub import HfApi, constants, hf_hub_download
    except ImportError:
        raise UnsupportedCheckpointError(f"{ref}: not a local path; reading Hugging Face Hub repo ids needs "
                                         "huggingface_hub: pip install 'spectrax[hub]'") from None

    budget = None if disk_budget is None else parse_size(disk_budget)
    api = HfApi()
    offline = constants.is_offline_mode()
    # Downloading config.json first resolves the revision to a commit (and records the branch or
    # tag in the cache, so an offline rerun finds it); everything after is read at that commit.
    config_path = _hub_call(ref, repo_id, revision, "config.json",
                            lambda: hf_hub_download(repo_id, "config.json", revision=revision))
    snapshot = os.path.dirname(config_path)
    sha = os.path.basename(snapshot)
    if offline:
        sizes = {n: os.path.getsize(os.path.join(snapshot, n)) for n in os.listdir(snapshot)}
    else:
        info = _hub_call(ref, repo_id, revision, None, lambda: api.model_info(repo_id, revision=sha, files_metadata=True))
        sizes = {s.rfilename: s.size for s in info.siblings or ()}
    weight_map, names = _weight_files(ref, repo_id, revision, sha, sizes, offline)
    scratch = None
    if budget is not None:
        scratch = os.path.join(constants.HF_HOME, "spectrax", "budget", f"models--{repo_id.replace('/', '--')}", sha)
    headers: dict[str, Mapping[str, TensorInfo]] = {}
    cached: set[str] = set()
    files = []
    for name in names:
        in_cache = os.path.join(snapshot, name)
        if os.path.exists(in_cache):
            cached.add(in_cache)
            file = in_cache
        else:
            file = os.path.join(scratch, name) if scratch is not None else in_cache
        if os.path.exists(file):
            headers[file] = read_header(file).tensors
        elif offline:
            raise CheckpointError(_offline_message(ref, repo_id, revision, name))
        else:
            headers[file] = _remote_header(ref, api, repo_id, revision, sha, name, file)
        files.append(file)
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for name, info in headers[file].items():
            if name in tensors:
                raise CheckpointError(f"{ref}: tensor {name!r} appears in both {tensors[name].file} and {file}")
            tensors[name] = info
    for name, shard in weight_map.items():
        if name not in tensors or os.path.basename(tensors[name].file) != shard:
            raise CheckpointError(f"{ref}: {INDEX_NAME} lists {name!r} in {shard}, but that shard does not hold it")
    config = read_config(snapshot)
    hub = HubShards(ref, repo_id, revision, sha, sizes=sizes, headers=headers, cached=cached, budget=budget, scratch=scratch)
    return CheckpointFiles(path=snapshot, config=config, files=tuple(files), tensors=tensors,
                           config_source=f"{repo_id}: config.json"), hub


def _weight_files(ref: str, repo_id: str, revision: str | None, sha: str, listing: Mapping[str, Any],
                  offline: bool) -> tuple[Mapping[str, str], list[str]]:
    """The index's name -> shard map (empty without an index) and the safetensors files to read,
    chosen as for a local folder: the index, else `model.safetensors`, else every top-level file."""
    from huggingface_hub import hf_hub_download

    if INDEX_NAME in listing:
        path = _hub_call(ref, repo_id, revision, INDEX_NAME, lambda: hf_hub_download(repo_id, INDEX_NAME, revision=sha))
        shards, weight_map = read_index(path)
        return weight_map, shards
    if _SINGLE in listing:
        return {}, [_SINGLE]
    found = sorted(n for n in listing if n.endswith(".safetensors") and "/" not in n)
    if found:
        return {}, found
    others = sorted(n for n in listing if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf", ".h5", ".msgpack")))
    where = "in the cache (HF_HUB_OFFLINE is set)" if offline else "in the repo"
    raise UnsupportedCheckpointError(
        f"{ref}: no safetensors weights {where}" + (f" (it holds {', '.join(others[:4])})" if others else "")
        + "; spectrax reads safetensors only" + (": fetch the weights once online" if offline else ""))


def _remote_header(ref: str, api, repo_id: str, revision: str | None, sha: str, name: str, file: str) -> dict[str, TensorInfo]:
    """A file's tensors from its header on the Hub (range requests), as `TensorInfo`s at `file`.

    Offsets are relative to the data (the header length is not returned): these entries only
    describe the file until it is downloaded, when its own header replaces them."""
    meta = _hub_call(ref, repo_id, revision, name, lambda: api.parse_safetensors_file_metadata(repo_id, name, revision=sha))
    out = {}
    for tensor, t in meta.tensors.items():
        begin, end = t.data_offsets
        out[tensor] = TensorInfo(tensor, file, str(t.dtype), tuple(t.shape), begin, end)
    return out


def _hub_call(ref: str, repo_id: str, revision: str | None, filename: str | None, call):
    """Run a huggingface_hub call; its failures become one-line `CheckpointError`s naming `ref`."""
    from huggingface_hub import constants, errors, get_token

    try:
        return call()
    except errors.GatedRepoError:
        token = "the token given has no access" if get_token() else "HF_TOKEN is not set"
        raise CheckpointError(
            f"{ref}: gated repo on {constants.ENDPOINT} ({token}); accept its terms on the model page, then set "
            "HF_TOKEN to a token of an account with access") from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"{ref}: no such local path, and no repo {repo_id} on {constants.ENDPOINT} (a private repo needs HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"{ref}: repo {repo_id} has no revision {revision!r}") from None
    except errors.RemoteEntryNotFoundError:
        raise CheckpointError(f"{ref}: the repo has no {filename}") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
        raise CheckpointError(_offline_message(ref, repo_id, revision, filename)) from None
    except errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        transient = status is None or status >= 500 or status == 429
        raise CheckpointError(
            f"{ref}: fetching {_what(repo_id, filename)} from {constants.ENDPOINT} failed with HTTP {status}"
            + ("; rerun to resume (finished files are kept)" if transient else f" ({str(e).splitlines()[0]})")) from None
    except Exception as e:
        # A dropped or refused connection, raised by huggingface_hub's HTTP client (httpx) or as an OSError.
        if not (type(e).__module__.startswith(("httpx", "httpcore")) or isinstance(e, OSError)):
            raise
        raise CheckpointError(f"{ref}: fetching {_what(repo_id, filename)} from {constants.ENDPOINT} failed "
                              f"({type(e).__name__}: {' '.join(str(e).split())}); rerun to resume (finished files are kept)") from None


def _what(repo_id: str, filename: str | None) -> str:
    return f"{filename} of {repo_id}" if filename else repo_id


def _offline_message(ref: str, repo_id: str, revision: str | None, filename: str | None) -> str:
    from huggingface_hub import constants

    what = _what(repo_id, filename)
    rev = f" --revision {revision}" if revision else ""
    return (f"{ref}: {what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set"
            if constants.is_offline_mode() else
            f"{ref}: {what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be reached") + (
            f"; run this once online (without HF_HUB_OFFLINE) to cache it, or fetch it with `hf download {repo_id}{rev}`")
