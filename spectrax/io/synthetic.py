"""Write Llama-format checkpoints of any shape with Gaussian weights, for tests and benchmarks.

The files are what `transformers` would save for a `LlamaForCausalLM` with that config
(names, `[out, in]` orientation, optional sharding with an index), so the whole loading path is
exercised at real per-layer shapes (e.g. 14B: E=5120, H=40, KV=8, D=128, F=13824) without
downloading anything. Layers are generated and written one shard at a time, so writing a
checkpoint larger than memory works too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from spectrax.io.checkpoint import INDEX_NAME

__all__ = ["write_llama_checkpoint"]

_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def write_llama_checkpoint(
    path: str | os.PathLike,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int = 128,
    vocab_size: int = 128,
    dtype: str = "float32",
    layers_per_shard: int | None = None,
    seed: int = 0,
) -> str:
    """Create a new checkpoint directory at `path` with N(0, 1/E) weights and unit norms.

    Args:
      layers_per_shard: if set, write shards of that many layers plus
        `model.safetensors.index.json`; otherwise one `model.safetensors`.
    Returns:
      The absolute path of the new directory (which must not exist yet).
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(path)
    head_dim = head_dim or hidden_size // num_heads
    np_dtype = _DTYPES[dtype]
    rng = np.random.default_rng(seed)
    E, H, KV, D, F = hidden_size, num_heads, num_kv_heads, head_dim, intermediate_size

    def gaussian(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(E)).astype(np_dtype)

    def layer(i: int) -> dict[str, np.ndarray]:
        p = f"model.layers.{i}."
        return {
            p + "self_attn.q_proj.weight": gaussian(H * D, E),
            p + "self_attn.k_proj.weight": gaussian(KV * D, E),
            p + "self_attn.v_proj.weight": gaussian(KV * D, E),
            p + "self_attn.o_proj.weight": gaussian(E, H * D),
            p + "mlp.gate_proj.weight": gaussian(F, E),
            p + "mlp.up_proj.weight": gaussian(F, E),
            p + "mlp.down_proj.weight": gaussian(E, F),
            p + "input_layernorm.weight": np.ones(E, np_dtype),
            p + "post_attention_layernorm.weight": np.ones(E, np_dtype),
        }

    def globals_() -> dict[str, np.ndarray]:
        return {
            "model.embed_tokens.weight": gaussian(vocab_size, E),
            "model.norm.weight": np.ones(E, np_dtype),
            "lm_head.weight": gaussian(vocab_size, E),
        }

    def shards() -> Iterator[dict[str, np.ndarray]]:
        per = layers_per_shard or num_layers
        for start in range(0, num_layers, per):
            tensors = {}
            for i in range(start, min(start + per, num_layers)):
                tensors.update(layer(i))
            yield tensors
        yield globals_()

    weight_map = {}
    if layers_per_shard is None:
        tensors = {name: array for shard in shards() for name, array in shard.items()}
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        count = -(-num_layers // layers_per_shard) + 1
        for k, tensors in enumerate(shards(), start=1):
            name = f"model-{k:05d}-of-{count:05d}.safetensors"
            save_file(tensors, os.path.join(path, name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, name))
        with open(os.path.join(path, INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": E,
        "intermediate_size": F,
        "num_attention_heads": H,
        "num_key_value_heads": KV,
        "head_dim": D,
        "num_hidden_layers": num_layers,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
    }
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return path
