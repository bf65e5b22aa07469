"""Random initialization of a llama-format canonical pytree (the tree `spectrax.load` returns)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spectrax.io.config import ModelSpec

__all__ = ["init_llama"]

Tree = dict[str, Any]


def init_llama(key: jax.Array, spec: ModelSpec, *, std: float = 0.02, dtype: Any = jnp.float32) -> Tree:
    """Canonical params of a llama/mistral/qwen3-style decoder: weights `N(0, std)`, norm gains 1.

    No biases; per-head `q_norm`/`k_norm` (ones) when `spec.qk_norm == "head"`. One layer group.

    Returns:
      `{"embed": {"tokens": (V, E)}, "layers": ({"layer_ids": (L,) int32 numpy, "attn": {q (L,H,D,E),
      k/v (L,KV,D,E), o (L,H,D,E)}, "mlp": {gate/up (L,F,E), down (L,E,F)}, "norms": {attn_norm,
      mlp_norm: {"scale": (L,E)}}},), "final_norm": {"scale": (E,)}, "lm_head": {"weight": (V, E)}}`;
      with tied embeddings `lm_head.weight` is the very array of `embed.tokens`.
    """
    L, E, H, KV = spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads
    D, F, V = spec.head_dim, spec.intermediate_size, spec.vocab_size
    shapes = {
        "embed": (V, E), "lm_head": (V, E),
        "q": (L, H, D, E), "k": (L, KV, D, E), "v": (L, KV, D, E), "o": (L, H, D, E),
        "gate": (L, F, E), "up": (L, F, E), "down": (L, E, F),
    }
    keys = dict(zip(shapes, jax.random.split(key, len(shapes))))
    w = {name: std * jax.random.normal(keys[name], shape, dtype) for name, shape in shapes.items()}
    attn = {name: w[name] for name in ("q", "k", "v", "o")}
    if spec.qk_norm == "head":
        attn.update(q_norm=jnp.ones((L, D), dtype), k_norm=jnp.ones((L, D), dtype))
    ones = {"scale": jnp.ones((L, E), dtype)}
    group = {
        "layer_ids": np.arange(L, dtype=np.int32),
        "attn": attn,
        "mlp": {name: w[name] for name in ("gate", "up", "down")},
        "norms": {"attn_norm": ones, "mlp_norm": {"scale": jnp.ones((L, E), dtype)}},
    }
    embed = {"tokens": w["embed"]}
    head = {"weight": embed["tokens"] if spec.tie_word_embeddings else w["lm_head"]}
    return {"embed": embed, "layers": (group,), "final_norm": {"scale": jnp.ones((E,), dtype)}, "lm_head": head}
