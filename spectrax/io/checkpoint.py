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
import json
import os
from collections.abc import Mapping
from typing import Any

from spectrax.io.errors import CheckpointError, ConfigError, UnsupportedCheckpointError
from spectrax.io.gguf import find_gguf, read_gguf
from spectrax.io.safetensors import TensorInfo, read_header

__all__ = ["CheckpointFiles", "open_checkpoint", "INDEX_NAME"]

INDEX_NAME = "model.safetensors.index.json"
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")

_CONVERT_HINT = (
    "spectrax never unpickles checkpoints (a pickle can execute arbitrary code). Convert it once, "
    "in an environment you trust that has torch and transformers:\n"
    "  python -c \"import transformers as t; m = t.AutoModelForCausalLM.from_pretrained('{path}'); "
    "m.save_pretrained('{path}-safetensors', safe_serialization=True)\"\n"
    "then point spectrax at {path}-safetensors."
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
        raise UnsupportedCheckpointError(f"{path}: not a directory, a .safetensors or a .gguf file; " + _CONVERT_HINT.format(path=path))
    else:
        raise CheckpointError(f"{path}: no such file or directory")
    config = _read_config(directory)
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


def _shards_from_index(index: str) -> tuple[list[str], Mapping[str, str]]:
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index}: malformed index ({type(e).__name__}: {e}); expected {{'weight_map': {{name: shard}}}}") from None
    directory = os.path.dirname(index)
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if os.path.basename(shard) != shard:
            raise CheckpointError(f"{index}: shard name {shard!r} points outside the checkpoint directory")
        if not os.path.exists(os.path.join(directory, shard)):
            missing = sorted(name for name, s in weight_map.items() if s == shard)
            raise CheckpointError(
                f"{index}: shard {shard!r} is listed for {len(missing)} tensors (e.g. {missing[0]!r}) but "
                f"{os.path.join(directory, shard)} does not exist (incomplete download?)"
            )
    return [os.path.join(directory, shard) for shard in shards], weight_map


def _read_config(directory: str) -> Mapping[str, Any]:
    path = os.path.join(directory, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; spectrax needs the model's config.json beside the weights") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return config
