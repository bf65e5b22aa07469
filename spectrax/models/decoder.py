"""Forward pass of llama-style decoders straight from the canonical pytree of `spectrax.load`.

    model = sx.load("path/to/checkpoint")
    logits = forward(model.params, model.spec, input_ids)      # (B, T) int -> (B, T, V) float32

Supported families: llama, mistral, qwen2, qwen3, phi3, olmo2, gemma, gemma2, gemma3_text
(pre- and/or post-norms, q/k norms, biases, GQA/MQA, sliding windows, logit soft-capping,
partial rotary). Options spectrax does not implement (scaled rotary variants, bidirectional
attention, other layer types) are refused with an error instead of being approximated.

Each group of same-shaped layers runs as one `jax.lax.scan` over its stacked leaves; per-layer
options (rotary base, sliding window) travel through the scan as arrays, so a group with mixed
local/global layers (gemma3) is still one compiled body. Layers run in the order of their
`layer_ids`, also when groups interleave.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectrax.io.config import ModelSpec
from spectrax.io.errors import UnsupportedCheckpointError
from spectrax.models.layers import ACTIVATIONS, attention, causal_mask, gated_mlp, rms_norm, rope_tables

__all__ = ["DecoderOptions", "decoder_options", "forward", "split_layer_ids", "merge_layer_ids", "SUPPORTED_FAMILIES"]

Tree = dict[str, Any]

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "gemma", "gemma2", "gemma3_text")
_GEMMA = ("gemma", "gemma2", "gemma3_text")
_NO_WINDOW = 2**30  # a sliding window wider than any sequence: full causal attention


@dataclasses.dataclass(frozen=True)
class DecoderOptions:
    """Everything besides the weights that the forward pass needs; hashable (a static jit argument).

    Attributes:
      norm_eps, norm_offset: RMSNorm epsilon and gain offset (1.0 for Gemma's `1 + w`).
      qk_norm: None, `"head"` or `"projection"` (see `layers.attention`).
      activation: MLP activation name (a key of `layers.ACTIVATIONS`).
      embed_scale: multiplies the token embeddings (Gemma: sqrt(E)); None for none.
      attn_scale: softmax scale; None means `D ** -0.5` of each layer.
      attn_softcap, final_softcap: tanh soft-capping of attention scores / output logits, or None.
      rope_thetas: rotary base per layer, length L.
      rotary_fraction: fraction of each head's features that rotate (partial rotary).
      windows: sliding-window size per layer (`q - k < window`), None for full causal attention.
    """

    norm_eps: float
    norm_offset: float
    qk_norm: str | None
    activation: str
    embed_scale: float | None
    attn_scale: float | None
    attn_softcap: float | None
    final_softcap: float | None
    rope_thetas: tuple[float, ...]
    rotary_fraction: float
    windows: tuple[int | None, ...]


def decoder_options(spec: ModelSpec) -> DecoderOptions:
    """Read the forward-pass options of `spec` from its raw HF config, refusing what is not implemented."""
    if spec.model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedCheckpointError(
            f"no forward pass for model_type {spec.model_type!r}; spectrax.models.decoder runs "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )
    if spec.norm != "rms":
        raise UnsupportedCheckpointError(f"{spec.model_type}: norm {spec.norm!r} is not RMSNorm")
    config = spec.config
    if config.get("use_bidirectional_attention"):
        raise UnsupportedCheckpointError(f"{spec.model_type}: use_bidirectional_attention=true is not implemented")
    layer_types = _layer_types(spec)
    thetas, fractions = zip(*(_rope(config, kind, spec.model_type) for kind in layer_types))
    if len(set(fractions)) != 1:
        raise UnsupportedCheckpointError(f"{spec.model_type}: partial_rotary_factor differs per layer type")
    activation = config.get("hidden_activation") or config.get("hidden_act") or "silu"
    if activation not in ACTIVATIONS:
        raise UnsupportedCheckpointError(f"{spec.model_type}: activation {activation!r} is not implemented")
    gemma = spec.model_type in _GEMMA
    scalar = config.get("query_pre_attn_scalar") if spec.model_type in ("gemma2", "gemma3_text") else None
    return DecoderOptions(
        norm_eps=float(spec.norm_eps),
        norm_offset=float(spec.norm_offset),
        qk_norm=spec.qk_norm,
        activation=activation,
        embed_scale=math.sqrt(spec.hidden_size) if gemma else None,
        attn_scale=float(scalar) ** -0.5 if scalar else None,
        attn_softcap=_float_or_none(config.get("attn_logit_softcapping")) if gemma else None,
        final_softcap=_float_or_none(config.get("final_logit_softcapping")) if gemma else None,
        rope_thetas=tuple(thetas),
        rotary_fraction=fractions[0],
        windows=tuple(_window(config, kind, spec.model_type) for kind in layer_types),
    )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _layer_types(spec: ModelSpec) -> tuple[str, ...]:
    """Per-layer attention kind; derived as transformers does for configs that predate `layer_types`."""
    config, L = spec.config, spec.num_layers
    if config.get("layer_types"):
        kinds = tuple(config["layer_types"])
    elif spec.model_type == "mistral" and config.get("sliding_window") is not None:
        kinds = ("sliding_attention",) * L
    elif spec.model_type in ("qwen2", "qwen3") and config.get("use_sliding_window") and config.get("sliding_window"):
        first = config.get("max_window_layers", L)
        kinds = tuple("sliding_attention" if i >= first else "full_attention" for i in range(L))
    elif spec.model_type == "gemma2":
        kinds = tuple("sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(L))
    elif spec.model_type == "gemma3_text":
        pattern = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 6
        kinds = tuple("sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(L))
    else:
        kinds = ("full_attention",) * L
    unknown = sorted(set(kinds) - {"full_attention", "sliding_attention"})
    if unknown:
        raise UnsupportedCheckpointError(f"{spec.model_type}: layer types {unknown} are not implemented")
    return kinds


def _window(config: Mapping[str, Any], kind: str, model_type: str) -> int | None:
    if kind != "sliding_attention":
        return None
    window = config.get("sliding_window")
    if window is None:
        raise UnsupportedCheckpointError(f"{model_type}: a sliding_attention layer but no sliding_window size")
    return int(window)


def _rope(config: Mapping[str, Any], kind: str, model_type: str) -> tuple[float, float]:
    """(theta, partial_rotary_factor) of one layer kind; only the default (unscaled) rotary is implemented."""
    params = config.get("rope_parameters")
    if isinstance(params, Mapping) and kind in params and isinstance(params[kind], Mapping):
        params = params[kind]  # gemma3: one entry per layer type
    if params is None:  # configs older than transformers 5
        params = dict(config.get("rope_scaling") or {})
        default_theta = config.get("rope_theta", 10000.0)
        if model_type == "gemma3_text" and kind == "sliding_attention":
            default_theta = config.get("rope_local_base_freq", default_theta)
        params.setdefault("rope_theta", default_theta)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedCheckpointError(
            f"{model_type}: rope_type {rope_type!r} is not implemented (only the default unscaled rotary)"
        )
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    fraction = float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    return theta, fraction


# ----------------------------------------------------------------------------------------------
# Layer order.


def split_layer_ids(params: Tree) -> tuple[Tree, tuple[tuple[int, ...], ...]]:
    """Separate the integer `layer_ids` from the weights, e.g. to differentiate w.r.t. the weights only.

    Returns:
      `(weights, layer_ids)`: `weights` is `params` with `layer_ids` removed from each group;
      `layer_ids[g]` are group g's layer indices as Python ints.
    """
    groups, ids = [], []
    for group in params["layers"]:
        ids.append(tuple(int(i) for i in np.asarray(group["layer_ids"])))
        groups.append({k: v for k, v in group.items() if k != "layer_ids"})
    return {**params, "layers": tuple(groups)}, tuple(ids)


def merge_layer_ids(weights: Tree, layer_ids: Sequence[Sequence[int]]) -> Tree:
    """Inverse of `split_layer_ids`: put `layer_ids` (as int32 numpy arrays) back into each group."""
    if len(layer_ids) != len(weights["layers"]):
        raise ValueError(f"{len(layer_ids)} layer_ids for {len(weights['layers'])} groups")
    groups = tuple({"layer_ids": np.asarray(ids, np.int32), **g} for g, ids in zip(weights["layers"], layer_ids))
    return {**weights, "layers": groups}


def _runs(groups: Sequence[Tree], num_layers: int) -> tuple[tuple[int, int, int, int], ...]:
    """Execution order as runs `(group, first_slot, stop_slot, first_layer)` of consecutive layers.

    A group without `layer_ids` is taken to hold the layers right after the previous group's.
    """
    order: list[tuple[int, int, int]] = []  # (layer, group, slot)
    next_layer = 0
    for g, group in enumerate(groups):
        n = jax.tree.leaves(group["attn"])[0].shape[0]
        if "layer_ids" in group:
            try:
                ids = [int(i) for i in np.asarray(group["layer_ids"]).reshape(-1)]
            except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as e:
                raise TypeError(
                    "layer_ids must be concrete (they fix the order of the layers): keep them out of "
                    "jit/grad arguments, e.g. `weights, ids = split_layer_ids(params)` and "
                    "`forward(merge_layer_ids(weights, ids), ...)` inside the traced function"
                ) from e
        else:
            ids = list(range(next_layer, next_layer + n))
        if len(ids) != n:
            raise ValueError(f"group {g} has {len(ids)} layer_ids but its leaves stack {n} layers")
        order += [(layer, g, slot) for slot, layer in enumerate(ids)]
        next_layer = max(ids, default=next_layer - 1) + 1
    order.sort()
    if [layer for layer, _, _ in order] != list(range(num_layers)):
        raise ValueError(f"layer_ids {[layer for layer, _, _ in order]} are not the layers 0..{num_layers - 1}")
    runs: list[list[int]] = []
    for layer, g, slot in order:
        if runs and runs[-1][0] == g and runs[-1][2] == slot:
            runs[-1][2] += 1
        else:
            runs.append([g, slot, slot + 1, layer])
    return tuple(tuple(r) for r in runs)


# ----------------------------------------------------------------------------------------------
# Forward pass.


def forward(params: Tree, spec: ModelSpec, input_ids: jax.Array | np.ndarray, *, dtype: Any = jnp.float32) -> jax.Array:
    """Next-token logits of a decoder-only model.

    Args:
      params: the canonical tree of `spectrax.load(path).params`: `embed.tokens (V, E)`, `layers`
        (groups with leaves `(n, ...)` and `layer_ids (n,)`, which must be concrete; groups
        without `layer_ids` follow each other in order), `final_norm.scale (E,)`,
        `lm_head.weight (V, E)`. Leaves may be numpy (any float dtype, bf16 included) or jax arrays.
      spec: the checkpoint's `ModelSpec`.
      input_ids: `(B, T)` integer token ids; positions are `0..T-1`, causal mask.
      dtype: compute dtype; every weight is cast to it (float32 by default, float64 under x64).
    Returns:
      `(B, T, V)` logits in `dtype`.
    """
    chex.assert_rank(input_ids, 2)
    chex.assert_type(input_ids, int)
    options = decoder_options(spec)
    runs = _runs(params["layers"], spec.num_layers)
    weights = {
        **{k: v for k, v in params.items() if k != "layers"},
        "layers": tuple({k: v for k, v in g.items() if k != "layer_ids"} for g in params["layers"]),
    }
    chex.assert_shape(weights["embed"]["tokens"], (spec.vocab_size, spec.hidden_size))
    return _forward(weights, input_ids, options=options, runs=runs, dtype=jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("options", "runs", "dtype"))
def _forward(weights: Tree, input_ids: jax.Array, *, options: DecoderOptions, runs: tuple, dtype) -> jax.Array:
    w = jax.tree.map(lambda a: jnp.asarray(a).astype(dtype), weights)
    x = jnp.take(w["embed"]["tokens"], input_ids, axis=0)  # (B, T, E)
    if options.embed_scale is not None:
        x = x * jnp.asarray(options.embed_scale, dtype)
    T = input_ids.shape[1]
    for group, start, stop, first_layer in runs:
        stacked = jax.tree.map(lambda a: a[start:stop], w["layers"][group])
        x = _run_layers(x, stacked, range(first_layer, first_layer + stop - start), options, T)
    if "final_norm" in w:
        x = rms_norm(x, w["final_norm"]["scale"], options.norm_eps, options.norm_offset)
    logits = jnp.einsum("bte,ve->btv", x, w["lm_head"]["weight"])
    if "bias" in w["lm_head"]:
        logits = logits + w["lm_head"]["bias"]
    if options.final_softcap is not None:
        logits = options.final_softcap * jnp.tanh(logits / options.final_softcap)
    return logits


def _run_layers(x: jax.Array, stacked: Tree, layers: range, options: DecoderOptions, T: int) -> jax.Array:
    """`jax.lax.scan` of `_block` over `n` consecutive same-shaped layers; leaves of `stacked` are `(n, ...)`."""
    D = stacked["attn"]["q"].shape[2]
    rotary_dim = int(D * options.rotary_fraction)
    tables = [rope_tables(options.rope_thetas[i], rotary_dim, T, x.dtype) for i in layers]
    cos = jnp.stack([c for c, _ in tables])  # (n, T, R/2)
    sin = jnp.stack([s for _, s in tables])
    windows = jnp.asarray([_NO_WINDOW if options.windows[i] is None else options.windows[i] for i in layers], jnp.int32)
    scale = options.attn_scale if options.attn_scale is not None else D**-0.5

    def body(h, layer):
        params, c, s, window = layer
        return _block(h, params, c, s, causal_mask(T, window), options, scale), None

    x, _ = jax.lax.scan(body, x, (stacked, cos, sin, windows))
    return x


def _norm(x: jax.Array, norms: Mapping[str, Any], placement: str, options: DecoderOptions) -> jax.Array:
    if placement not in norms:
        return x
    return rms_norm(x, norms[placement]["scale"], options.norm_eps, options.norm_offset)


def _block(x: jax.Array, layer: Tree, cos, sin, mask, options: DecoderOptions, scale: float) -> jax.Array:
    """One decoder layer `(B, T, E) -> (B, T, E)`; norms apply where the layer has them
    (pre: `attn_norm`/`mlp_norm`; post: `attn_post_norm`/`mlp_post_norm`)."""
    norms = layer["norms"]
    h = attention(
        _norm(x, norms, "attn_norm", options), layer["attn"], cos, sin, mask,
        scale=scale, eps=options.norm_eps, norm_offset=options.norm_offset,
        qk_norm=options.qk_norm, softcap=options.attn_softcap,
    )
    x = x + _norm(h, norms, "attn_post_norm", options)
    h = gated_mlp(_norm(x, norms, "mlp_norm", options), layer["mlp"], options.activation)
    return x + _norm(h, norms, "mlp_post_norm", options)
