"""Architecture adapters: pure functions from one layer's stored tensors to the canonical pytree.

Canonical layer (DESIGN.md), `[out, in]` orientation, heads first:

  attn:  q (H, D, E), k (KV, D, E), v (KV, D, E), o (H, D, E) with o[h] = W_O[:, h*D:(h+1)*D]^T;
         q/k features in rotary half-split order (i pairs with i + D/2), whatever the storage;
         q_bias (H, D), k_bias/v_bias (KV, D), o_bias (E,) where stored;
         q_norm/k_norm as stored: (D,) per head (qwen3, gemma3) or (H*D,)/(KV*D,) (olmo2).
  mlp:   gate (F, E), up (F, E), down (E, F), and gate_bias/up_bias/down_bias where stored.
  norms: {placement: {"scale": (E,), "bias": (E,)?}} with placements attn_norm, mlp_norm
         (pre-norms), attn_post_norm, mlp_post_norm (post-norms), as the family has them.

Adapters see tensors by their name relative to the layer (`self_attn.q_proj.weight`) through
`Tensors`, which checks every shape against the spec and remembers what was used, so a tensor
the adapter did not take (a bias it forgot) is an error, never silently dropped. They work on
numpy arrays and only reshape, transpose and slice: no value changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from spectrax.io.config import ModelSpec
from spectrax.io.errors import CheckpointError

__all__ = ["Tensors", "LayerAdapter", "GlobalAdapter", "ADAPTERS", "layer_pattern", "IGNORED_BUFFERS", "norm_placements"]

Array = np.ndarray
Tree = dict[str, Any]

# Non-weight buffers some files carry (causal masks, rotary caches, position ids): skipped on purpose.
IGNORED_BUFFERS = (
    "attn.bias", "attn.masked_bias", "attention.bias", "attention.masked_bias",
    "attention.rotary_emb.inv_freq", "rotary_emb.inv_freq", "self_attn.rotary_emb.inv_freq",
    "embeddings.position_ids", "position_ids",
)


class Tensors:
    """Read access to a set of named tensors that checks shapes and records what was taken.

    `where` describes the tensors' origin (file and name prefix) for error messages.
    """

    def __init__(self, arrays: Mapping[str, Array], where: Callable[[str], str]):
        self._arrays = arrays
        self._where = where
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> Array:
        if name not in self._arrays:
            raise CheckpointError(f"tensor {self._where(name)} is missing")
        array = self._arrays[name]
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {self._where(name)} has shape {tuple(array.shape)} but the config implies {tuple(shape)}"
            )
        self.used.add(name)
        return array

    def optional(self, name: str, shape: tuple[int, ...] | None = None) -> Array | None:
        return self.get(name, shape) if name in self._arrays else None

    def unused(self) -> list[str]:
        return sorted(n for n in self._arrays if n not in self.used and not n.endswith(IGNORED_BUFFERS))


LayerAdapter = Callable[[Tensors, ModelSpec, int], Tree]
GlobalAdapter = Callable[[Tensors, ModelSpec], Tree]


def _put(tree: Tree, key: str, value: Array | None) -> None:
    if value is not None:
        tree[key] = value


def _norm(t: Tensors, name: str, size: int, *, required: bool = True) -> Tree | None:
    """A norm's gain and optional bias; old BERT files call them gamma/beta."""
    for scale_name, bias_name in (("weight", "bias"), ("gamma", "beta")):
        if f"{name}.{scale_name}" in t:
            tree = {"scale": t.get(f"{name}.{scale_name}", (size,))}
            _put(tree, "bias", t.optional(f"{name}.{bias_name}", (size,)))
            return tree
    if required:
        t.get(f"{name}.weight")  # raises the missing-tensor error
    return None


def _norms(t: Tensors, placements: Mapping[str, str], size: int, *, required: bool = True) -> Tree:
    norms = {placement: _norm(t, name, size, required=required) for placement, name in placements.items()}
    return {placement: norm for placement, norm in norms.items() if norm is not None}


def _heads(weight: Array, heads: int, head_dim: int) -> Array:
    """`[heads*head_dim, E]` rows -> `(heads, head_dim, E)`."""
    return weight.reshape(heads, head_dim, weight.shape[-1])


def _deinterleave(rows: Array, heads: int, head_dim: int) -> Array:
    """Reorder each head's `head_dim` rows from interleaved rotary pairs to the half-split layout.

    With `rope_interleaved` (GPT-J / nanotron) feature 2i of a head rotates with feature 2i+1; the
    canonical tree, like transformers' Llama, pairs feature i with i + D/2. Row 2i moves to i and
    row 2i+1 to D/2 + i, in q and k alike, so every q.k product and every rotation is unchanged.
    `rows` is `[heads*head_dim, ...]` (a weight) or `[heads*head_dim]` (a bias).
    """
    tail = rows.shape[1:]
    paired = rows.reshape(heads, head_dim // 2, 2, *tail)
    return paired.swapaxes(1, 2).reshape(heads * head_dim, *tail)


def _out_heads(weight: Array, heads: int, head_dim: int) -> Array:
    """Output projection `[E, heads*head_dim]` -> `(heads, head_dim, E)`: head h's input columns, transposed."""
    return weight.reshape(weight.shape[0], heads, head_dim).transpose(1, 2, 0)


def _attention(q: Array, k: Array, v: Array, o: Array, biases: Mapping[str, Array | None], spec: ModelSpec, layer: int) -> Tree:
    """Canonical attention from `[out, in]` projections and flat biases."""
    H, KV, D = spec.num_heads, spec.num_kv_heads, spec.head_dims[layer]
    attn = {"q": _heads(q, H, D), "k": _heads(k, KV, D), "v": _heads(v, KV, D), "o": _out_heads(o, H, D)}
    for name, heads in (("q_bias", H), ("k_bias", KV), ("v_bias", KV)):
        if biases.get(name) is not None:
            attn[name] = biases[name].reshape(heads, D)
    _put(attn, "o_bias", biases.get("o_bias"))
    return attn


def _gated_mlp(t: Tensors, spec: ModelSpec, prefix: str = "mlp.") -> Tree:
    E, F = spec.hidden_size, spec.intermediate_size
    mlp = {
        "gate": t.get(prefix + "gate_proj.weight", (F, E)),
        "up": t.get(prefix + "up_proj.weight", (F, E)),
        "down": t.get(prefix + "down_proj.weight", (E, F)),
    }
    for part, size in (("gate", F), ("up", F), ("down", E)):
        _put(mlp, f"{part}_bias", t.optional(f"{prefix}{part}_proj.bias", (size,)))
    return mlp


def _plain_mlp(t: Tensors, spec: ModelSpec, up: str, down: str) -> Tree:
    E, F = spec.hidden_size, spec.intermediate_size
    mlp = {"up": t.get(up + ".weight", (F, E)), "down": t.get(down + ".weight", (E, F))}
    _put(mlp, "up_bias", t.optional(up + ".bias", (F,)))
    _put(mlp, "down_bias", t.optional(down + ".bias", (E,)))
    return mlp


# ----------------------------------------------------------------------------------------------
# Per-family layer adapters.


def norm_placements(spec: ModelSpec) -> Mapping[str, str]:
    """`{canonical norm: stored norm}` of a llama-like layer: where the family puts its RMSNorms
    (gemma2/3 around both blocks, olmo2 after them, the rest before them)."""
    if spec.model_type in ("gemma2", "gemma3_text"):
        return {
            "attn_norm": "input_layernorm",
            "attn_post_norm": "post_attention_layernorm",
            "mlp_norm": "pre_feedforward_layernorm",
            "mlp_post_norm": "post_feedforward_layernorm",
        }
    if spec.model_type == "olmo2":
        return {"attn_post_norm": "post_attention_layernorm", "mlp_post_norm": "post_feedforward_layernorm"}
    return {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


def llama_layer(t: Tensors, spec: ModelSpec, layer: int) -> Tree:
    """llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, olmo2: separate q/k/v/o projections."""
    E, H, KV, D = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dims[layer]
    p = "self_attn."
    proj = {
        "q": t.get(p + "q_proj.weight", (H * D, E)),
        "k": t.get(p + "k_proj.weight", (KV * D, E)),
        "v": t.get(p + "v_proj.weight", (KV * D, E)),
        "o": t.get(p + "o_proj.weight", (E, H * D)),
    }
    biases = {
        "q_bias": t.optional(p + "q_proj.bias", (H * D,)),
        "k_bias": t.optional(p + "k_proj.bias", (KV * D,)),
        "v_bias": t.optional(p + "v_proj.bias", (KV * D,)),
        "o_bias": t.optional(p + "o_proj.bias", (E,)),
    }
    if spec.rope_interleaved:
        for name, heads in (("q", H), ("k", KV)):
            proj[name] = _deinterleave(proj[name], heads, D)
            if biases[f"{name}_bias"] is not None:
                biases[f"{name}_bias"] = _deinterleave(biases[f"{name}_bias"], heads, D)
    attn = _attention(proj["q"], proj["k"], proj["v"], proj["o"], biases, spec, layer)
    if spec.qk_norm == "head":
        attn["q_norm"] = t.get(p + "q_norm.weight", (D,))
        attn["k_norm"] = t.get(p + "k_norm.weight", (D,))
    elif spec.qk_norm == "projection":
        attn["q_norm"] = t.get(p + "q_norm.weight", (H * D,))
        attn["k_norm"] = t.get(p + "k_norm.weight", (KV * D,))
    return {"attn": attn, "mlp": _gated_mlp(t, spec), "norms": _norms(t, norm_placements(spec), E)}


def phi3_layer(t: Tensors, spec: ModelSpec, layer: int) -> Tree:
    """phi3: `qkv_proj` is contiguous [H*D | KV*D | KV*D]; `gate_up_proj` is [gate | up]."""
    E, H, KV, D, F = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dims[layer], spec.intermediate_size
    qkv = t.get("self_attn.qkv_proj.weight", ((H + 2 * KV) * D, E))
    q, k, v = np.split(qkv, [H * D, (H + KV) * D])
    attn = _attention(q, k, v, t.get("self_attn.o_proj.weight", (E, H * D)), {}, spec, layer)
    gate_up = t.get("mlp.gate_up_proj.weight", (2 * F, E))
    mlp = {"gate": gate_up[:F], "up": gate_up[F:], "down": t.get("mlp.down_proj.weight", (E, F))}
    norms = _norms(t, {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}, E)
    return {"attn": attn, "mlp": mlp, "norms": norms}


def gpt2_layer(t: Tensors, spec: ModelSpec, layer: int) -> Tree:
    """gpt2: Conv1D weights are stored `[in, out]`; `c_attn` splits contiguously into q | k | v."""
    E, H, D, F = spec.hidden_size, spec.num_heads, spec.head_dims[layer], spec.intermediate_size
    qkv = t.get("attn.c_attn.weight", (E, 3 * H * D)).T
    q, k, v = np.split(qkv, 3)
    q_bias, k_bias, v_bias = np.split(t.get("attn.c_attn.bias", (3 * H * D,)), 3)
    # c_proj maps [in = H*D, out = E]; head h's block is rows h*D:(h+1)*D, already (D, E).
    o = t.get("attn.c_proj.weight", (H * D, E))
    attn = _attention(q, k, v, o.T, {"q_bias": q_bias, "k_bias": k_bias, "v_bias": v_bias,
                                     "o_bias": t.get("attn.c_proj.bias", (E,))}, spec, layer)
    mlp = {
        "up": t.get("mlp.c_fc.weight", (E, F)).T,
        "up_bias": t.get("mlp.c_fc.bias", (F,)),
        "down": t.get("mlp.c_proj.weight", (F, E)).T,
        "down_bias": t.get("mlp.c_proj.bias", (E,)),
    }
    return {"attn": attn, "mlp": mlp, "norms": _norms(t, {"attn_norm": "ln_1", "mlp_norm": "ln_2"}, E)}


def _interleaved_qkv(t: Tensors, spec: ModelSpec, layer: int, attn_prefix: str) -> Tree:
    """gpt_neox, bloom: fused projection whose out axis is `(H, 3, D)`, interleaved per head."""
    E, H, D = spec.hidden_size, spec.num_heads, spec.head_dims[layer]
    fused = t.get(attn_prefix + "query_key_value.weight", (3 * H * D, E)).reshape(H, 3, D, E)
    attn = {"q": fused[:, 0], "k": fused[:, 1], "v": fused[:, 2],
            "o": _out_heads(t.get(attn_prefix + "dense.weight", (E, H * D)), H, D)}
    bias = t.optional(attn_prefix + "query_key_value.bias", (3 * H * D,))
    if bias is not None:
        bias = bias.reshape(H, 3, D)
        attn.update(q_bias=bias[:, 0], k_bias=bias[:, 1], v_bias=bias[:, 2])
    _put(attn, "o_bias", t.optional(attn_prefix + "dense.bias", (E,)))
    mlp = _plain_mlp(t, spec, "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
    norms = _norms(t, {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}, E)
    return {"attn": attn, "mlp": mlp, "norms": norms}


def gpt_neox_layer(t: Tensors, spec: ModelSpec, layer: int) -> Tree:
    return _interleaved_qkv(t, spec, layer, "attention.")


def bloom_layer(t: Tensors, spec: ModelSpec, layer: int) -> Tree:
    return _interleaved_qkv(t, spec, layer, "self_attention.")


def opt_layer(t: Tensors, spec: ModelSpec, layer: int) -> Tree:
    """opt: separate projections with biases (`out_proj`), plain `fc1`/`fc2` MLP."""
    return _separate_with_biases(
        t, spec, layer,
        names=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
        mlp=("fc1", "fc2"),
        norms={"attn_norm": "self_attn_layer_norm", "mlp_norm": "final_layer_norm"},
    )


def bert_layer(t: Tensors, spec: ModelSpec, layer: int) -> Tree:
    """bert: post-LN encoder; norms follow attention and MLP."""
    return _separate_with_biases(
        t, spec, layer,
        names=("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
        mlp=("intermediate.dense", "output.dense"),
        norms={"attn_post_norm": "attention.output.LayerNorm", "mlp_post_norm": "output.LayerNorm"},
    )


def _separate_with_biases(t: Tensors, spec: ModelSpec, layer: int, names, mlp, norms) -> Tree:
    E, H, KV, D = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dims[layer]
    q, k, v, o = names
    attn = _attention(
        t.get(q + ".weight", (H * D, E)), t.get(k + ".weight", (KV * D, E)),
        t.get(v + ".weight", (KV * D, E)), t.get(o + ".weight", (E, H * D)),
        {"q_bias": t.optional(q + ".bias", (H * D,)), "k_bias": t.optional(k + ".bias", (KV * D,)),
         "v_bias": t.optional(v + ".bias", (KV * D,)), "o_bias": t.optional(o + ".bias", (E,))},
        spec, layer,
    )
    # OPT with layer_norm_elementwise_affine=false stores no norm parameters at all.
    affine = bool(spec.config.get("layer_norm_elementwise_affine", True))
    return {"attn": attn, "mlp": _plain_mlp(t, spec, *mlp), "norms": _norms(t, norms, E, required=affine)}


# ----------------------------------------------------------------------------------------------
# Global (non-layer) tensors. Names are relative to the tower's root; `lm_head`-style names are
# looked up by the caller at the root and its ancestors.


def _embed(t: Tensors, spec: ModelSpec, tokens: str, **optional: str) -> Tree:
    embed = {"tokens": t.get(tokens, (spec.vocab_size, spec.hidden_size))}
    for key, name in optional.items():
        _put(embed, key, t.optional(name))
    return embed


def llama_globals(t: Tensors, spec: ModelSpec) -> Tree:
    return {"embed": _embed(t, spec, "embed_tokens.weight"), "final_norm": _norm(t, "norm", spec.hidden_size)}


def gpt2_globals(t: Tensors, spec: ModelSpec) -> Tree:
    return {"embed": _embed(t, spec, "wte.weight", positions="wpe.weight"), "final_norm": _norm(t, "ln_f", spec.hidden_size)}


def gpt_neox_globals(t: Tensors, spec: ModelSpec) -> Tree:
    return {"embed": _embed(t, spec, "embed_in.weight"), "final_norm": _norm(t, "final_layer_norm", spec.hidden_size)}


def bloom_globals(t: Tensors, spec: ModelSpec) -> Tree:
    embed = _embed(t, spec, "word_embeddings.weight")
    embed["norm"] = _norm(t, "word_embeddings_layernorm", spec.hidden_size)
    return {"embed": embed, "final_norm": _norm(t, "ln_f", spec.hidden_size)}


def opt_globals(t: Tensors, spec: ModelSpec) -> Tree:
    word_dim = spec.config.get("word_embed_proj_dim") or spec.hidden_size
    embed = {"tokens": t.get("embed_tokens.weight", (spec.vocab_size, word_dim))}
    _put(embed, "positions", t.optional("embed_positions.weight"))
    _put(embed, "project_in", t.optional("project_in.weight", (spec.hidden_size, word_dim)))
    _put(embed, "project_out", t.optional("project_out.weight", (word_dim, spec.hidden_size)))
    out = {"embed": embed}
    _put(out, "final_norm", _norm(t, "final_layer_norm", spec.hidden_size, required=False))
    return out


def bert_globals(t: Tensors, spec: ModelSpec) -> Tree:
    E = spec.hidden_size
    embed = _embed(t, spec, "embeddings.word_embeddings.weight", positions="embeddings.position_embeddings.weight",
                   token_types="embeddings.token_type_embeddings.weight")
    embed["norm"] = _norm(t, "embeddings.LayerNorm", E)
    out: Tree = {"embed": embed}
    if "pooler.dense.weight" in t:
        out["pooler"] = {"weight": t.get("pooler.dense.weight", (E, E)), "bias": t.get("pooler.dense.bias", (E,))}
    return out


ADAPTERS: Mapping[str, tuple[LayerAdapter, GlobalAdapter]] = {
    **{name: (llama_layer, llama_globals) for name in
       ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2")},
    "phi3": (phi3_layer, llama_globals),
    "gpt2": (gpt2_layer, gpt2_globals),
    "gpt_neox": (gpt_neox_layer, gpt_neox_globals),
    "bloom": (bloom_layer, bloom_globals),
    "opt": (opt_layer, opt_globals),
    "bert": (bert_layer, bert_globals),
}

# How layer tensors are named: `<root>` + pattern with the layer index + relative name.
_LAYER_PATTERNS = {"gpt2": "h", "bloom": "h", "bert": "encoder.layer"}

# Output heads, looked up from the tower's root upwards: name -> canonical key.
LM_HEADS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "gpt_neox": (("embed_out.weight", "weight"),),
    "bert": (
        ("cls.predictions.decoder.weight", "weight"),
        ("cls.predictions.decoder.bias", "bias"),
        ("cls.predictions.bias", "bias"),
        ("cls.predictions.transform.dense.weight", "transform"),
        ("cls.predictions.transform.dense.bias", "transform_bias"),
        ("cls.predictions.transform.LayerNorm.weight", "transform_norm_scale"),
        ("cls.predictions.transform.LayerNorm.bias", "transform_norm_bias"),
        ("cls.predictions.transform.LayerNorm.gamma", "transform_norm_scale"),
        ("cls.predictions.transform.LayerNorm.beta", "transform_norm_bias"),
    ),
}
DEFAULT_LM_HEAD = (("lm_head.weight", "weight"), ("lm_head.bias", "bias"))


def layer_pattern(model_type: str) -> str:
    """The dotted name before a layer index in this family's tensor names (`layers`, `h`, ...)."""
    return _LAYER_PATTERNS.get(model_type, "layers")
