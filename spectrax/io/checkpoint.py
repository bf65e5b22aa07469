"""Locate the files of a Hugging Face checkpoint and index its tensors, reading headers only.

A checkpoint is a directory with `config.json` and either `model.safetensors`, shards listed
in `model.safetensors.index.json`, or other `*.safetensors` files; a single `.safetensors`
file whose directory holds `config.json` is accepted too, and so is a GGUF file (or a folder
holding one; see `spectrax.io.gguf`). Nothing here reads tensor data and nothing ever writes to
the checkpoint.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import stat
from collections.abc import Mapping
from typing import Any

from spectrax.io.config import parse_config_json
from spectrax.io.errors import CheckpointError, ConfigError, UnsupportedCheckpointError
from spectrax.io.gguf import find_gguf, read_gguf
from spectrax.io.safetensors import TensorInfo, load_json, open_regular, read_header

__all__ = ["CheckpointFiles", "open_checkpoint", "read_config", "read_index", "INDEX_NAME"]

INDEX_NAME = "model.safetensors.index.json"
_MAX_CONFIG_BYTES = 16 << 20
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")

_CONVERT_HINT = (
    "spectrax never unpickles checkpoints (a pickle can run code); convert it once where torch and "
    "transformers are installed: `transformers.AutoModelForCausalLM.from_pretrained('{path}')"
    ".save_pretrained('{path}-safetensors')` and point spectrax at that folder"
)


@dataclasses.dataclass(frozen=True)
class CheckpointFiles:
    """A checkpoint's `config` (the parsed `config.json`), its safetensors `files`, and every
    tensor's location by its full stored name.

    For a GGUF file, `path` and `files` name the `.gguf`, `config` is built from its metadata
    (`config_source` says so in errors) and `tensors` are `GGUFTensorInfo`s under the Hugging
    Face names they stand for.
    """

    path: str
    config: Mapping[str, Any]
    files: tuple[str, ...]
    tensors: Mapping[str, TensorInfo]
    config_source: str = ""

    @property
    def nbytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())


def open_checkpoint(path: str | os.PathLike) -> CheckpointFiles:
    """Index the checkpoint at `path` (a directory, one `.safetensors` file beside its config, or a GGUF file)."""
    path = os.path.abspath(os.fspath(path))
    gguf_file = find_gguf(path)
    if gguf_file is not None:
        config, gguf_tensors = read_gguf(gguf_file)
        return CheckpointFiles(gguf_file, config, (gguf_file,), gguf_tensors, config_source=f"{gguf_file} (GGUF metadata)")
    weight_map: Mapping[str, str] = {}
    if os.path.isfile(path) and path.endswith(".safetensors"):
        directory, files = os.path.dirname(path), [path]
    elif os.path.isdir(path):
        directory = path
        files, weight_map = _safetensors_files(path)
    elif os.path.exists(path):
        raise UnsupportedCheckpointError(f"{path}: not a directory, a .safetensors or a .gguf file; "
                                         + _CONVERT_HINT.format(path=os.path.dirname(path)))
    else:
        raise CheckpointError(f"{path}: no such file or directory")
    config = read_config(directory)
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for name, info in read_header(file).tensors.items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} appears in both {tensors[name].file} and {file}")
            tensors[name] = info
    for name, shard in weight_map.items():
        if name not in tensors or os.path.basename(tensors[name].file) != shard:
            raise CheckpointError(
                f"{os.path.join(directory, INDEX_NAME)}: lists {name!r} in {shard}, but that shard does not hold it"
            )
    return CheckpointFiles(path=directory, config=config, files=tuple(files), tensors=tensors,
                           config_source=os.path.join(directory, "config.json"))


def _safetensors_files(directory: str) -> tuple[list[str], Mapping[str, str]]:
    """The safetensors files to read and, for a sharded checkpoint, its name -> shard map."""
    index = os.path.join(directory, INDEX_NAME)
    if os.path.exists(index):
        return _shards_from_index(index)
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(single):
        return [single], {}
    found = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if found:
        return found, {}
    pickles = sorted(p for pattern in _PICKLE_PATTERNS for p in glob.glob(os.path.join(directory, pattern)))
    if pickles:
        raise UnsupportedCheckpointError(
            f"{directory}: holds only pickle files ({', '.join(os.path.basename(p) for p in pickles)}), "
            "no .safetensors. " + _CONVERT_HINT.format(path=directory)
        )
    raise CheckpointError(f"{directory}: no model.safetensors, {INDEX_NAME} or *.safetensors file found")


def read_index(index: str) -> tuple[list[str], Mapping[str, str]]:
    """The shard file names (sorted) and the tensor name -> shard map of a safetensors index."""
    with open_regular(index, "index") as f:
        weight_map = load_json(f.read(), f"{index}: malformed index")
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: malformed index; expected {{'weight_map': {{tensor name: shard file name}}}}")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if shard in ("", ".", "..") or os.path.basename(shard) != shard:
            raise CheckpointError(f"{index}: shard name {shard!r} is not a file name inside the checkpoint directory")
    return shards, weight_map


def _shards_from_index(index: str) -> tuple[list[str], Mapping[str, str]]:
    shards, weight_map = read_index(index)
    directory = os.path.dirname(index)
    for shard in shards:
        if not os.path.exists(os.path.join(directory, shard)):
            missing = sorted(name for name, s in weight_map.items() if s == shard)
            raise CheckpointError(
                f"{index}: shard {shard!r} is listed for {len(missing)} tensors (e.g. {missing[0]!r}) but "
                f"{os.path.join(directory, shard)} does not exist (incomplete download?)"
            )
    return [os.path.join(directory, shard) for shard in shards], weight_map


def read_config(directory: str) -> Mapping[str, Any]:
    """The parsed `config.json` in `directory` (a JSON object), or a `ConfigError` naming it."""
    path = os.path.join(directory, "config.json")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; spectrax needs the model's config.json beside the weights") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read forever, a directory would not open
        raise ConfigError(f"{path}: not a regular file (a folder, FIFO or device)")
    if info.st_size > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {info.st_size} bytes; a model config is a few KB (limit {_MAX_CONFIG_BYTES >> 20} MiB)")
    with open(path, "rb") as f:
        return parse_config_json(f.read(), source=path)
