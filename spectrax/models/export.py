"""Canonical pytree -> Hugging Face tensors and checkpoint directory (the inverse of the llama adapter).

`to_hf_llama` undoes `spectrax.io.adapters.llama_layer`/`llama_globals` exactly (reshapes and
transposes only), so `spectrax.load` of what `save_hf_checkpoint` writes gives back the same tree.
Every canonical leaf is either exported or reported: nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from spectrax.io.adapters import norm_placements
from spectrax.io.config import ModelSpec

__all__ = ["to_hf_llama", "save_hf_checkpoint", "LLAMA_LIKE"]

Tree = dict[str, Any]

# Families whose tensors the llama adapter reads (separate q/k/v/o projections, gated MLP).
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2")

_ATTN = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
_MLP = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def _flat_heads(w: np.ndarray) -> np.ndarray:
    """`(heads, D, E)` -> `[heads*D, E]`."""
    return w.reshape(-1, w.shape[-1])


def _layer_tensors(attn: Tree, mlp: Tree, norms: Tree, spec: ModelSpec) -> dict[str, np.ndarray]:
    """One layer's canonical leaves (no layer axis) -> tensors named relative to `model.layers.{i}.`."""
    out: dict[str, np.ndarray] = {}
    leftover = set(attn) | {f"mlp.{k}" for k in mlp} | {f"norms.{k}" for k in norms}
    for key, name in _ATTN.items():
        w = np.asarray(attn[key])
        # o (H, D, E): head h's block is W_O[:, h*D:(h+1)*D]^T, so W_O = o.transpose(2, 0, 1) flattened.
        out[f"self_attn.{name}.weight"] = w.transpose(2, 0, 1).reshape(w.shape[2], -1) if key == "o" else _flat_heads(w)
        leftover.discard(key)
        if f"{key}_bias" in attn:
            out[f"self_attn.{name}.bias"] = np.asarray(attn[f"{key}_bias"]).reshape(-1)
            leftover.discard(f"{key}_bias")
    for key in ("q_norm", "k_norm"):
        if key in attn:
            out[f"self_attn.{key}.weight"] = np.asarray(attn[key])
            leftover.discard(key)
    for key, name in _MLP.items():
        out[f"mlp.{name}.weight"] = np.asarray(mlp[key])
        leftover.discard(f"mlp.{key}")
        if f"{key}_bias" in mlp:
            out[f"mlp.{name}.bias"] = np.asarray(mlp[f"{key}_bias"])
            leftover.discard(f"mlp.{key}_bias")
    for placement, name in norm_placements(spec).items():
        if placement in norms:
            norm = dict(norms[placement])
            out[f"{name}.weight"] = np.asarray(norm.pop("scale"))
            if "bias" in norm:
                out[f"{name}.bias"] = np.asarray(norm.pop("bias"))
            if norm:
                raise ValueError(f"norm {placement} has leaves {sorted(norm)} with no Hugging Face name")
            leftover.discard(f"norms.{placement}")
    if leftover:
        raise ValueError(f"canonical leaves {sorted(leftover)} have no {spec.model_type} tensor name; refusing to drop them")
    return out


def to_hf_llama(params: Tree, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Hugging Face tensors (`model.layers.{i}.self_attn.q_proj.weight` `[H*D, E]`, ...) of a canonical tree.

    Args:
      params: canonical tree of a llama-like family (see `LLAMA_LIKE`); leaves numpy or jax arrays,
        each group with `layer_ids`.
      spec: its `ModelSpec`. With `spec.tie_word_embeddings` the head must equal the embedding and
        is not written (as `save_pretrained` does).
    Returns:
      `{name: contiguous numpy array}` in the leaves' own dtypes.
    """
    if spec.model_type not in LLAMA_LIKE:
        raise ValueError(f"to_hf_llama exports {', '.join(LLAMA_LIKE)}, not {spec.model_type!r}")
    out = {"model.embed_tokens.weight": np.asarray(params["embed"]["tokens"])}
    if set(params["embed"]) != {"tokens"}:
        raise ValueError(f"embed leaves {sorted(set(params['embed']) - {'tokens'})} have no llama tensor name")
    seen: list[int] = []
    for group in params["layers"]:
        ids = [int(i) for i in np.asarray(group["layer_ids"])]
        unknown = set(group) - {"layer_ids", "attn", "mlp", "norms"}
        if unknown:
            raise ValueError(f"layer group leaves {sorted(unknown)} have no llama tensor name")
        for slot, layer in enumerate(ids):
            pick = lambda tree: {k: _slot(v, slot) for k, v in tree.items()}  # noqa: E731
            tensors = _layer_tensors(pick(group["attn"]), pick(group["mlp"]), pick(group["norms"]), spec)
            out.update({f"model.layers.{layer}.{name}": w for name, w in tensors.items()})
            seen.append(layer)
    if sorted(seen) != list(range(spec.num_layers)):
        raise ValueError(f"layer_ids {sorted(seen)} are not the layers 0..{spec.num_layers - 1}")
    out["model.norm.weight"] = np.asarray(params["final_norm"]["scale"])
    head = np.asarray(params["lm_head"]["weight"])
    if set(params["lm_head"]) != {"weight"}:
        raise ValueError("lm_head leaves other than 'weight' have no llama tensor name")
    if spec.tie_word_embeddings:
        if not np.array_equal(head, out["model.embed_tokens.weight"]):
            raise ValueError("spec says tie_word_embeddings but lm_head.weight differs from embed.tokens")
    else:
        out["lm_head.weight"] = head
    return {name: np.ascontiguousarray(w) for name, w in out.items()}


def _slot(tree: Any, slot: int) -> Any:
    if isinstance(tree, Mapping):
        return {k: _slot(v, slot) for k, v in tree.items()}
    return np.asarray(tree)[slot]


def _default_permissions(directory: str) -> None:
    """`mkdtemp` makes a private (0700) folder; give it and its files the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o666 & ~umask)


def save_hf_checkpoint(
    directory: str | os.PathLike,
    params: Tree,
    spec: ModelSpec,
    *,
    dtype: Any = None,
    config: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str] | None = None,
    force: bool = False,
) -> str:
    """Write `config.json` + `model.safetensors` as `save_pretrained` lays them out.

    Args:
      directory: the checkpoint folder; it is written under a temporary name, then renamed.
      dtype: cast every tensor to this numpy dtype (e.g. `ml_dtypes.bfloat16`); None keeps them.
      config: the `config.json` dict (default `spec.config`).
      extra_files: more text files to write into the folder, `{file name: contents}`.
      force: replace an existing `directory` that holds only the files this function writes
        (config.json, model.safetensors, `extra_files`); without it an existing one is an error,
        and a folder holding anything else is never replaced.
    Returns:
      The directory path.
    """
    from safetensors.numpy import save_file

    from spectrax.run.store import foreign_files, replace_folder

    directory = os.path.abspath(os.fspath(directory))
    written = {"config.json", "model.safetensors", *(extra_files or {})}
    if os.path.lexists(directory) and not force:
        raise FileExistsError(f"{directory} exists; pass force=True (--force) to replace it")
    if os.path.lexists(directory) and (extra := foreign_files(directory, written)):
        raise FileExistsError(f"{directory} holds files save_hf_checkpoint does not write ({', '.join(extra[:3])}); "
                              "it will not replace it")
    tensors = to_hf_llama(params, spec)
    if dtype is not None:
        tensors = {name: np.ascontiguousarray(w.astype(dtype)) for name, w in tensors.items()}
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(directory) + "-", dir=parent)
    try:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(dict(config if config is not None else spec.config), f, indent=2, sort_keys=True)
            f.write("\n")
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        for name, text in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        _default_permissions(tmp)
        replace_folder(tmp, directory, written=written)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
