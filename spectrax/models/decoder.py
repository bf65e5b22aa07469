"""Forward pass of decoder-only models straight from the canonical pytree of `spectrax.load`.

    model = sx.load("path/to/checkpoint")
    logits = forward(model.params, model.spec, input_ids)      # (B, T) int -> (B, T, V) float32
    acts = capture(model.params, model.spec, input_ids)        # + hidden states and attention
    loss, grads = activation_grads(model.params, model.spec, input_ids, loss_fn)

Supported families: llama, mistral, qwen2, qwen3, phi3, olmo2, gemma, gemma2, gemma3_text, gpt2,
gpt_neox (RMSNorm or LayerNorm, pre- and/or post-norms, q/k norms, biases, GQA/MQA, sliding windows,
logit soft-capping, partial rotary, learned absolute positions, gated or plain MLPs, parallel
residual). Options spectrax does not implement (scaled rotary variants, bidirectional attention,
other layer types, GPT-2's per-layer attention scaling) are refused with an error instead of being
approximated.

Each group of same-shaped layers runs as one `jax.lax.scan` over its stacked leaves; per-layer
options (rotary base, sliding window) travel through the scan as arrays, so a group with mixed
local/global layers (gemma3) is still one compiled body. Layers run in the order of their
`layer_ids`, also when groups interleave.

Capture and activation gradients use additive taps: zeros added to the residual stream after each
layer and to each layer's attention probabilities. The forward pass is unchanged by them, and the
gradient of a loss with respect to a tap is exactly its gradient with respect to the tapped
activation, so one `jax.value_and_grad` over the taps gives the gradients of every hidden state and
every attention map at once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectrax.io.config import ModelSpec
from spectrax.io.errors import UnsupportedCheckpointError
from spectrax.models.layers import (
    ACTIVATIONS,
    attention,
    causal_mask,
    dense_mlp,
    gated_mlp,
    layer_norm,
    rms_norm,
    rope_tables,
)

__all__ = [
    "SUPPORTED_FAMILIES",
    "Activations",
    "DecoderOptions",
    "Taps",
    "activation_grads",
    "apply_norm",
    "capture",
    "decoder_options",
    "forward",
    "merge_layer_ids",
    "split_layer_ids",
    "zero_taps",
]

Tree = dict[str, Any]

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "gemma", "gemma2", "gemma3_text",
                      "gpt2", "gpt_neox")
_GEMMA = ("gemma", "gemma2", "gemma3_text")
_NO_WINDOW = 2**30  # a sliding window wider than any sequence: full causal attention


@dataclasses.dataclass(frozen=True)
class DecoderOptions:
    """Everything besides the weights that the forward pass needs; hashable (a static jit argument).

    Attributes:
      norm: `"rms"` (RMSNorm) or `"layer"` (LayerNorm with bias).
      norm_eps, norm_offset: norm epsilon and RMSNorm gain offset (1.0 for Gemma's `1 + w`).
      qk_norm: None, `"head"` or `"projection"` (see `layers.attention`).
      activation: MLP activation name (a key of `layers.ACTIVATIONS`).
      embed_scale: multiplies the token embeddings (Gemma: sqrt(E)); None for none.
      attn_scale: softmax scale; None means `D ** -0.5` of each layer.
      attn_softcap, final_softcap: tanh soft-capping of attention scores / output logits, or None.
      rope_thetas: rotary base per layer, length L.
      rotary_fraction: fraction of each head's features that rotate (partial rotary).
      windows: sliding-window size per layer (`q - k < window`), None for full causal attention.
      parallel_residual: attention and MLP both read the layer's input (GPT-NeoX):
        `x + attn(norm1(x)) + mlp(norm2(x))` instead of one after the other.
    """

    norm: str
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
    parallel_residual: bool = False


def decoder_options(spec: ModelSpec) -> DecoderOptions:
    """Read the forward-pass options of `spec` from its raw HF config, refusing what is not implemented."""
    if spec.model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedCheckpointError(
            f"no forward pass for model_type {spec.model_type!r}; spectrax.models.decoder runs "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )
    if spec.norm not in ("rms", "layer"):
        raise UnsupportedCheckpointError(f"{spec.model_type}: norm {spec.norm!r} is not implemented")
    config = spec.config
    _refuse_gpt2_options(spec)
    if config.get("use_bidirectional_attention"):
        raise UnsupportedCheckpointError(f"{spec.model_type}: use_bidirectional_attention=true is not implemented")
    layer_types = _layer_types(spec)
    thetas, fractions = zip(*(_rope(config, kind, spec.model_type) for kind in layer_types))
    if len(set(fractions)) != 1:
        raise UnsupportedCheckpointError(f"{spec.model_type}: partial_rotary_factor differs per layer type")
    activation = (config.get("hidden_activation") or config.get("hidden_act") or config.get("activation_function")
                  or "silu")
    if activation not in ACTIVATIONS:
        raise UnsupportedCheckpointError(f"{spec.model_type}: activation {activation!r} is not implemented")
    gemma = spec.model_type in _GEMMA
    scalar = config.get("query_pre_attn_scalar") if spec.model_type in ("gemma2", "gemma3_text") else None
    attn_scale = float(scalar) ** -0.5 if scalar else None
    if spec.model_type == "gpt2" and not config.get("scale_attn_weights", True):
        attn_scale = 1.0
    return DecoderOptions(
        norm=spec.norm,
        norm_eps=float(spec.norm_eps),
        norm_offset=float(spec.norm_offset),
        qk_norm=spec.qk_norm,
        activation=activation,
        embed_scale=math.sqrt(spec.hidden_size) if gemma else None,
        attn_scale=attn_scale,
        attn_softcap=_float_or_none(config.get("attn_logit_softcapping")) if gemma else None,
        final_softcap=_float_or_none(config.get("final_logit_softcapping")) if gemma else None,
        rope_thetas=tuple(thetas),
        rotary_fraction=fractions[0],
        windows=tuple(_window(config, kind, spec.model_type) for kind in layer_types),
        parallel_residual=spec.model_type == "gpt_neox" and bool(config.get("use_parallel_residual", True)),
    )


def _refuse_gpt2_options(spec: ModelSpec) -> None:
    if spec.model_type != "gpt2":
        return
    for key in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if spec.config.get(key):
            raise UnsupportedCheckpointError(f"gpt2: {key}=true is not implemented")


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
    if model_type == "gpt2":
        return 10000.0, 0.0  # learned absolute positions, no rotary
    params = config.get("rope_parameters")
    if params is None and model_type == "gpt_neox":  # configs older than transformers 5
        params = {"rope_theta": config.get("rotary_emb_base", 10000.0),
                  "partial_rotary_factor": config.get("rotary_pct", 0.25), **dict(config.get("rope_scaling") or {})}
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


class Activations(NamedTuple):
    """What flows through a decoder for one batch (or the gradients of a loss with respect to it).

    logits: `(B, T, V)`.
    hidden: `(L + 1, B, T, E)` residual stream: index 0 is the embedding output entering layer 0,
      index `l + 1` the output of layer `l` (the last one before the final norm).
    attention: `(L, B, H, T, T)` attention probabilities per layer and query head (query t, key s),
      or None when not captured.
    projections: None, or `{"q": (L, B, T, H, D), "k"/"v": (L, B, T, KV, D)}`: each layer's
      projections `W x + b` of its normed input, before q/k norms and rotary.
    """

    logits: jax.Array
    hidden: jax.Array
    attention: jax.Array | None
    projections: dict[str, jax.Array] | None = None


class Taps(NamedTuple):
    """Additive perturbations of the activations, shaped like the matching `Activations` fields:
    `hidden (L + 1, B, T, E)`, `attention (L, B, H, T, T)` or None, `projections` dict or None."""

    hidden: jax.Array
    attention: jax.Array | None
    projections: dict[str, jax.Array] | None = None


def zero_taps(spec: ModelSpec, batch: int, length: int, *, attention: bool = True, projections: bool = False,
              dtype: Any = jnp.float32) -> Taps:
    """All-zero taps for a `(batch, length)` input: adding them changes nothing."""
    L, E, H, KV = spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads
    probs = jnp.zeros((L, batch, H, length, length), dtype) if attention else None
    proj = None
    if projections:
        D = _uniform_head_dim(spec)
        proj = {name: jnp.zeros((L, batch, length, n, D), dtype) for name, n in (("q", H), ("k", KV), ("v", KV))}
    return Taps(jnp.zeros((L + 1, batch, length, E), dtype), probs, proj)


def _uniform_head_dim(spec: ModelSpec) -> int:
    if len(set(spec.head_dims)) != 1:
        raise UnsupportedCheckpointError(f"{spec.model_type}: capturing projections needs one head_dim for "
                                         f"all layers, got {sorted(set(spec.head_dims))}")
    return spec.head_dims[0]


def _prepare(params: Tree, spec: ModelSpec, input_ids) -> tuple[Tree, DecoderOptions, tuple]:
    chex.assert_rank(input_ids, 2)
    chex.assert_type(input_ids, int)
    options = decoder_options(spec)
    runs = _runs(params["layers"], spec.num_layers)
    weights = {
        **{k: v for k, v in params.items() if k != "layers"},
        "layers": tuple({k: v for k, v in g.items() if k != "layer_ids"} for g in params["layers"]),
    }
    chex.assert_shape(weights["embed"]["tokens"], (spec.vocab_size, spec.hidden_size))
    positions = weights["embed"].get("positions")
    if positions is not None and input_ids.shape[1] > positions.shape[0]:
        raise ValueError(f"{spec.model_type}: {input_ids.shape[1]} tokens per sequence but only "
                         f"{positions.shape[0]} learned positions (embed.positions)")
    if len({g["attn"]["q"].shape[1] for g in weights["layers"]}) != 1:
        raise UnsupportedCheckpointError(f"{spec.model_type}: the number of query heads differs between layers")
    return weights, options, runs


def forward(params: Tree, spec: ModelSpec, input_ids: jax.Array | np.ndarray, *, dtype: Any = jnp.float32) -> jax.Array:
    """Next-token logits of a decoder-only model.

    Args:
      params: the canonical tree of `spectrax.load(path).params`: `embed.tokens (V, E)` (and
        `embed.positions (P, E)` for learned positions), `layers` (groups with leaves `(n, ...)` and
        `layer_ids (n,)`, which must be concrete; groups without `layer_ids` follow each other in
        order), `final_norm`, `lm_head.weight (V, E)`. Leaves may be numpy (any float dtype, bf16
        included) or jax arrays; they are cast to `dtype` inside the compiled function, so the
        caller's copy is the only full copy of the weights.
      spec: the checkpoint's `ModelSpec`.
      input_ids: `(B, T)` integer token ids; positions are `0..T-1`, causal mask.
      dtype: compute dtype (float32 by default, float64 under x64).

    Returns:
      `(B, T, V)` logits in `dtype`.

    Examples:
        >>> import numpy as np
        >>> import spectrax as sx
        >>> from spectrax.models import forward
        >>> model = sx.load(sx.data.TINY_LLAMA)    # trained to copy: [BOS, x_1..x_16, SEP, x_1..x_16]
        >>> x = np.arange(20, 36)
        >>> ids = np.concatenate([[0], x, [1], x])[None]          # (B, T) = (1, 34)
        >>> logits = forward(model.params, model.spec, ids)
        >>> logits.shape, logits.dtype
        ((1, 34, 64), dtype('float32'))
        >>> bool((np.asarray(logits[0, 17:33]).argmax(-1) == x).all())    # after SEP it copies x
        True
    """
    weights, options, runs = _prepare(params, spec, input_ids)
    return _forward(weights, input_ids, None, options=options, runs=runs, dtype=jnp.dtype(dtype), keep=None)


def capture(params: Tree, spec: ModelSpec, input_ids: jax.Array | np.ndarray, *, attention: bool = True,
            projections: bool = False, taps: Taps | None = None, dtype: Any = jnp.float32) -> Activations:
    """Logits, the residual stream after every layer and (optionally) attention maps and projections.

    Args:
      params: as in `forward`.
      spec: as in `forward`.
      input_ids: as in `forward`.
      attention: also return the `(L, B, H, T, T)` attention probabilities (memory grows as T^2).
      projections: also return every layer's q/k/v projections (see `Activations`).
      taps: optional `Taps` added to the activations (see `zero_taps`), with `attention` and
        `projections` present exactly when captured; `activation_grads` differentiates through them.
      dtype: as in `forward`.

    Returns:
      `Activations(logits, hidden, attention or None, projections or None)`.

    Examples:
        >>> import numpy as np
        >>> import spectrax as sx
        >>> from spectrax.models import capture
        >>> model = sx.load(sx.data.TINY_LLAMA)
        >>> acts = capture(model.params, model.spec, np.array([[0, 5, 9, 13, 1]]))
        >>> acts.hidden.shape, acts.attention.shape     # (L + 1, B, T, E), (L, B, H, T, T)
        ((5, 1, 5, 64), (4, 1, 4, 5, 5))
        >>> bool(np.allclose(np.asarray(acts.attention).sum(-1), 1, atol=1e-5))    # each query's weights sum to 1
        True
    """
    weights, options, runs = _prepare(params, spec, input_ids)
    if projections:
        _uniform_head_dim(spec)
    if taps is not None and ((taps.attention is not None) != attention or (taps.projections is not None) != projections):
        raise ValueError("taps.attention / taps.projections must be given exactly when attention / projections "
                         "are captured")
    keep = ("hidden",) + (("probs",) if attention else ()) + (("q", "k", "v") if projections else ())
    logits, kept = _forward(weights, input_ids, taps, options=options, runs=runs, dtype=jnp.dtype(dtype), keep=keep)
    return Activations(logits, kept["hidden"], kept.get("probs"),
                       {name: kept[name] for name in ("q", "k", "v")} if projections else None)


def activation_grads(params: Tree, spec: ModelSpec, input_ids: jax.Array | np.ndarray,
                     loss_fn: Callable[[jax.Array], jax.Array], *, attention: bool = True, projections: bool = False,
                     dtype: Any = jnp.float32) -> tuple[jax.Array, Activations, Activations]:
    """A scalar loss of the logits, the activations, and the loss's gradients with respect to them.

    Args:
      params: as in `forward`.
      spec: as in `forward`.
      input_ids: as in `forward`.
      loss_fn: `(B, T, V)` logits -> scalar, e.g. next-token cross-entropy.
      attention: also capture (and differentiate) the attention probabilities.
      projections: also capture (and differentiate) the q/k/v projections.
      dtype: as in `forward`.
    Returns:
      `(loss, activations, grads)`: `activations` as from `capture`; `grads` an `Activations` of
      the same shapes holding d loss / d logits, d loss / d hidden[l] (the gradient reaching the
      residual stream after layer l-1, through everything downstream of it), d loss / d attention[l]
      and d loss / d projections.
    """
    B, T = np.shape(input_ids)
    taps = zero_taps(spec, B, T, attention=attention, projections=projections, dtype=dtype)

    def loss_of(taps_and_logits_tap):
        taps, logits_tap = taps_and_logits_tap
        acts = capture(params, spec, input_ids, attention=attention, projections=projections, taps=taps, dtype=dtype)
        return loss_fn(acts.logits + logits_tap), acts

    logits_tap = jnp.zeros((B, T, spec.vocab_size), dtype)
    (loss, acts), (tap_grads, logits_grad) = jax.value_and_grad(loss_of, has_aux=True)((taps, logits_tap))
    return loss, acts, Activations(logits_grad, tap_grads.hidden, tap_grads.attention, tap_grads.projections)


@functools.partial(jax.jit, static_argnames=("options", "runs", "dtype", "keep"))
def _forward(weights: Tree, input_ids: jax.Array, taps: Taps | None, *, options: DecoderOptions, runs: tuple,
             dtype, keep: tuple[str, ...] | None):
    """Logits, or with `keep` (names among "hidden", "probs", "q", "k", "v") `(logits, {name: (L, ...)})`;
    "hidden" then also holds the embedding output at index 0, `(L + 1, B, T, E)`."""
    # layers are cast to `dtype` one at a time inside the scan, so a bf16 model never has a
    # second, float32 copy of all its layers
    cast = functools.partial(jax.tree.map, lambda a: jnp.asarray(a).astype(dtype))
    w = {**cast({k: v for k, v in weights.items() if k != "layers"}),
         "layers": tuple(jax.tree.map(jnp.asarray, g) for g in weights["layers"])}
    T = input_ids.shape[1]
    if taps is not None:
        taps = cast(taps)
    x = embedded = _embed(w["embed"], input_ids, options, taps)
    outputs = []
    for group, start, stop, first_layer in runs:
        stacked = jax.tree.map(lambda a: a[start:stop], w["layers"][group])
        layer_taps = None
        if taps is not None:
            n = stop - start
            layer_taps = {"hidden": taps.hidden[first_layer + 1:first_layer + 1 + n]}
            if taps.attention is not None:
                layer_taps["probs"] = taps.attention[first_layer:first_layer + n]
            for name, tap in (taps.projections or {}).items():
                layer_taps[name] = tap[first_layer:first_layer + n]
        x, kept = _run_layers(x, stacked, layer_taps, range(first_layer, first_layer + stop - start), options, T, keep)
        outputs.append(kept)
    if "final_norm" in w:
        x = apply_norm(x, w["final_norm"], options)
    logits = jnp.einsum("bte,ve->btv", x, w["lm_head"]["weight"])
    if "bias" in w["lm_head"]:
        logits = logits + w["lm_head"]["bias"]
    if options.final_softcap is not None:
        logits = options.final_softcap * jnp.tanh(logits / options.final_softcap)
    if keep is None:
        return logits
    stacked_outputs = {name: jnp.concatenate([o[name] for o in outputs]) for name in keep}
    stacked_outputs["hidden"] = jnp.concatenate([embedded[None], stacked_outputs["hidden"]])
    return logits, stacked_outputs


def _embed(embed: Tree, input_ids: jax.Array, options: DecoderOptions, taps: Taps | None) -> jax.Array:
    """The residual stream entering layer 0, `(B, T, E)` (tap included), from compute-dtype weights."""
    x = jnp.take(embed["tokens"], input_ids, axis=0)
    if options.embed_scale is not None:
        x = x * jnp.asarray(options.embed_scale, x.dtype)
    if "positions" in embed:
        x = x + embed["positions"][:input_ids.shape[1]]
    if taps is not None:
        x = x + taps.hidden[0]
    return x


def _run_layers(x: jax.Array, stacked: Tree, taps: dict[str, jax.Array] | None, layers: range,
                options: DecoderOptions, T: int, keep: tuple[str, ...] | None):
    """`jax.lax.scan` of `_block` over `n` consecutive same-shaped layers; leaves of `stacked` are `(n, ...)`.

    Returns `(x, kept)`: kept is None, or `{name: (n, ...)}` for the names in `keep` ("hidden" is
    each layer's output).
    """
    D = stacked["attn"]["q"].shape[2]
    rotary_dim = int(D * options.rotary_fraction)
    tables = [rope_tables(options.rope_thetas[i], rotary_dim, T, x.dtype) for i in layers]
    cos = jnp.stack([c for c, _ in tables])  # (n, T, R/2)
    sin = jnp.stack([s for _, s in tables])
    windows = jnp.asarray([_NO_WINDOW if options.windows[i] is None else options.windows[i] for i in layers], jnp.int32)
    scale = options.attn_scale if options.attn_scale is not None else D**-0.5

    def body(h, layer):
        params, c, s, window, tap = layer
        params = jax.tree.map(lambda a: a.astype(h.dtype), params)
        tap = dict(tap or {})
        hidden_tap = tap.pop("hidden", None)
        h, internals = _block(h, params, c, s, causal_mask(T, window), options, scale, tap)
        if hidden_tap is not None:
            h = h + hidden_tap
        if keep is None:
            return h, None
        return h, {name: h if name == "hidden" else internals[name] for name in keep}

    return jax.lax.scan(body, x, (stacked, cos, sin, windows, taps))


def apply_norm(x: jax.Array, norm: Mapping[str, Any], options: DecoderOptions) -> jax.Array:
    """The model's norm (`options.norm`) with the parameters `norm` (`scale`, and `bias` for LayerNorm)."""
    if options.norm == "layer":
        bias = norm["bias"] if "bias" in norm else jnp.zeros_like(norm["scale"])
        return layer_norm(x, norm["scale"], bias, options.norm_eps)
    return rms_norm(x, norm["scale"], options.norm_eps, options.norm_offset)


def _norm(x: jax.Array, norms: Mapping[str, Any], placement: str, options: DecoderOptions) -> jax.Array:
    return apply_norm(x, norms[placement], options) if placement in norms else x


def _block(x: jax.Array, layer: Tree, cos, sin, mask, options: DecoderOptions, scale: float,
           taps: Mapping[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One decoder layer `(B, T, E) -> (B, T, E)`, with its attention internals (see `layers.attention`).

    Norms apply where the layer has them (pre: `attn_norm`/`mlp_norm`; post: `attn_post_norm`/
    `mlp_post_norm`); with `parallel_residual` the MLP reads the layer's input, not the attention's output.
    """
    norms = layer["norms"]
    h, internals = attention(
        _norm(x, norms, "attn_norm", options), layer["attn"], cos, sin, mask,
        scale=scale, eps=options.norm_eps, norm_offset=options.norm_offset,
        qk_norm=options.qk_norm, softcap=options.attn_softcap, taps=taps,
    )
    h = _norm(h, norms, "attn_post_norm", options)
    mlp = gated_mlp if "gate" in layer["mlp"] else dense_mlp
    if options.parallel_residual:
        return x + h + mlp(_norm(x, norms, "mlp_norm", options), layer["mlp"], options.activation), internals
    x = x + h
    h = mlp(_norm(x, norms, "mlp_norm", options), layer["mlp"], options.activation)
    return x + _norm(h, norms, "mlp_post_norm", options), internals
