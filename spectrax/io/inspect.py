"""Describe a checkpoint from its headers and config alone: no tensor data is read."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from spectrax.io.load import open_source

__all__ = ["inspect"]

_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def inspect(path: str | os.PathLike, *, strict: bool = True, tower: str | None = None) -> dict[str, Any]:
    """The model spec and storage summary of the checkpoint at `path`, as a JSON-able dict.

    `path` may be a Hub repo id (`ORG/NAME[@REVISION]`): then only `config.json`, the index and
    the files' headers are fetched, never the weights.

    Keys: `path`, `hub` (repo, revision, commit sha; None for a local path), `files`, `model_type`, `wrapper`, `num_layers`, `num_heads`, `num_kv_heads`,
    `head_dim` (None when it varies; see `head_dims`), `hidden_size`, `intermediate_size`,
    `vocab_size`, `tie_word_embeddings`, `dtype` (the dominant stored dtype; for GGUF a ggml type
    such as `Q4_K`), `dtypes` (count per dtype), `num_tensors`, `total_bytes`, `tensors` (name, dtype, shape, bytes, file of each),
    `tower`, `other_towers`, `layer_groups` (layers with identical shapes), `layer_differences`
    (per-layer fields that differ from layer 0), `rope_interleaved`, `ignored_config_keys` (present
    and known not to matter), `unknown_config_keys` (accepted only under `strict=False`).

    Args:
      path: a checkpoint folder, a GGUF file or a Hub repo id.
      strict: refuse config.json options spectrax does not know.
      tower: the tensor-name root of the tower to describe in a multimodal checkpoint.

    Returns:
      The summary dict described above.

    Examples:
        >>> import spectrax as sx
        >>> info = sx.inspect(sx.data.TINY_LLAMA)   # headers only, no tensor is read
        >>> info["model_type"], info["num_layers"], info["num_heads"], info["num_kv_heads"], info["head_dim"]
        ('llama', 4, 4, 2, 16)
        >>> info["dtype"], info["num_tensors"], info["layer_groups"]
        ('bfloat16', 39, [[0, 1, 2, 3]])
    """
    source = open_source(path, strict=strict, tower=tower)
    spec, files = source.spec, source.files
    dtypes = Counter(info.dtype for info in files.tensors.values())
    by_bytes = Counter()
    for info in files.tensors.values():
        by_bytes[info.dtype] += info.nbytes
    dominant = by_bytes.most_common(1)[0][0] if by_bytes else None
    differences = [
        {"layer": i, "head_dim": spec.head_dims[i], "layer_type": spec.layer_types[i]}
        for i in range(spec.num_layers)
        if (spec.head_dims[i], spec.layer_types[i]) != (spec.head_dims[0], spec.layer_types[0])
    ]
    return {
        "path": files.path,
        "hub": source.hub.describe() if source.hub is not None else None,
        "files": [os.path.basename(f) for f in files.files],
        **{k: v for k, v in spec.to_dict().items() if k not in ("ignored_keys", "unknown_keys")},
        "dtype": _DTYPE_NAMES.get(dominant, dominant),
        "dtypes": dict(dtypes),
        "num_tensors": len(files.tensors),
        "total_bytes": files.nbytes,
        "tensors": [
            {"name": i.name, "dtype": i.dtype, "shape": list(i.shape), "bytes": i.nbytes, "file": os.path.basename(i.file)}
            for i in sorted(files.tensors.values(), key=lambda i: i.name)
        ],
        "tower": source.layout.root,
        "other_towers": list(source.layout.other_towers),
        "layer_groups": [list(g) for g in source.layer_groups()],
        "layer_differences": differences,
        "ignored_config_keys": list(spec.ignored_keys),
        "unknown_config_keys": list(spec.unknown_keys),
    }
