"""Pure building blocks of a decoder layer: RMSNorm/LayerNorm, rotary embedding, grouped-query
attention, gated and plain MLPs.

Axis names used in the docstrings: B batch, T query positions, S key positions (S = T here),
E hidden, H query heads, KV key/value heads, G = H // KV query heads per KV head, D head dim,
F MLP width. All functions are shape-polymorphic pure `jnp` code; dtypes are the caller's
(the decoder upcasts everything to one compute dtype before calling them).
"""

from __future__ import annotations

from collections.abc import Mapping

import chex
import jax
import jax.numpy as jnp

__all__ = ["rms_norm", "layer_norm", "rope_tables", "apply_rope", "causal_mask", "attention", "gated_mlp",
           "dense_mlp", "ACTIVATIONS"]

Array = jax.Array

# HF `hidden_act` names -> jax functions (only those the supported families use).
ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


def rms_norm(x: Array, scale: Array, eps: float, offset: float = 0.0) -> Array:
    """RMSNorm over the last axis, `x / rms(x) * (offset + scale)`, computed in at least float32.

    Args:
      x: `(..., N)`.
      scale: `(N,)` stored gain; `offset` is 1.0 for the Gemma convention `(1 + w)`.
    Returns:
      `(..., N)` in `x`'s dtype.
    """
    chex.assert_equal(x.shape[-1], scale.shape[-1])
    dtype = x.dtype if jnp.finfo(x.dtype).bits >= 32 else jnp.float32
    xf = x.astype(dtype)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (normed * (scale.astype(dtype) + offset)).astype(x.dtype)


def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    """LayerNorm over the last axis, `(x - mean) / sqrt(var + eps) * scale + bias`, in at least float32.

    Args:
      x: `(..., N)`; scale, bias: `(N,)`.
    Returns:
      `(..., N)` in `x`'s dtype.
    """
    chex.assert_equal(x.shape[-1], scale.shape[-1])
    chex.assert_equal_shape([scale, bias])
    dtype = x.dtype if jnp.finfo(x.dtype).bits >= 32 else jnp.float32
    xf = x.astype(dtype)
    centered = xf - jnp.mean(xf, axis=-1, keepdims=True)
    normed = centered * jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + eps)
    return (normed * scale.astype(dtype) + bias.astype(dtype)).astype(x.dtype)


def rope_tables(theta: float, rotary_dim: int, length: int, dtype=jnp.float32) -> tuple[Array, Array]:
    """cos/sin of the default (unscaled) rotary embedding at positions `0..length-1`.

    Returns:
      `(cos, sin)`, each `(length, rotary_dim // 2)`: angle `t * theta^(-2i/rotary_dim)`, as HF
      computes it (inverse frequencies in float32, then positions times frequencies).
    """
    exponents = jnp.arange(0, rotary_dim, 2, dtype=jnp.int32).astype(jnp.float32) / rotary_dim
    inv_freq = (1.0 / (jnp.float32(theta) ** exponents)).astype(dtype)
    angles = jnp.arange(length, dtype=jnp.int32).astype(dtype)[:, None] * inv_freq[None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate the first `2 * cos.shape[-1]` features of each head, half-split (`rotate_half`) layout.

    Feature `i` pairs with feature `i + R/2` inside the rotated part `R`; the rest pass through
    (partial rotary).

    Args:
      x: `(B, T, heads, D)`.
      cos: `(T, R/2)` with `R <= D`.
      sin: `(T, R/2)`, as `cos`.
    """
    chex.assert_rank(x, 4)
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    c, s = cos[None, :, None, :].astype(x.dtype), sin[None, :, None, :].astype(x.dtype)
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, rest], axis=-1)


def causal_mask(length: int, window: Array | int | None = None) -> Array:
    """`(T, T)` boolean mask, True where query `t` may attend key `s`: `s <= t` and `t - s < window`.

    `window` may be a traced int scalar (per-layer sliding windows under `scan`); `None` means none.
    """
    t = jnp.arange(length, dtype=jnp.int32)
    delta = t[:, None] - t[None, :]
    mask = delta >= 0
    if window is not None:
        mask = mask & (delta < window)
    return mask


def _matmul(x: Array, w: Array) -> Array:
    """`(..., N) @ (N, M) -> (..., M)` as one 2-D matmul.

    Flattening the leading axes first keeps the backward pass a plain GEMM; with batched
    einsums XLA:CPU chose layouts that made gradients ~3x slower.
    """
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def _project(x: Array, w: Array) -> Array:
    """Per-head projection `(B, T, E) x (heads, D, E) -> (B, T, heads, D)`."""
    heads, D, E = w.shape
    return _matmul(x, w.reshape(heads * D, E).T).reshape(*x.shape[:-1], heads, D)


def attention(
    x: Array,
    attn: Mapping[str, Array],
    cos: Array,
    sin: Array,
    mask: Array,
    *,
    scale: float,
    eps: float,
    norm_offset: float = 0.0,
    qk_norm: str | None = None,
    softcap: float | None = None,
    taps: Mapping[str, Array] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Grouped-query self-attention of one layer from canonical per-head weights.

    Query head `h` reads key/value head `h // G`; K/V weights are never repeated.

    Args:
      x: `(B, T, E)` normed hidden states.
      attn: `q (H, D, E)`, `k`/`v (KV, D, E)`, `o (H, D, E)`; optional `q_bias (H, D)`,
        `k_bias`/`v_bias (KV, D)`, `o_bias (E,)`, and `q_norm`/`k_norm`: `(D,)` per head when
        `qk_norm == "head"`, `(H*D,)`/`(KV*D,)` over the projection when `"projection"`.
      cos: `(T, R/2)` rotary table (`rope_tables`).
      sin: `(T, R/2)` rotary table.
      mask: `(T, T)` boolean, True = attend.
      scale: softmax scale applied to `q . k`.
      softcap: if set, scores become `softcap * tanh(scores / softcap)` before masking.
      taps: optional additive perturbations, any of `q (B, T, H, D)`, `k`/`v (B, T, KV, D)` (added
        to the projections after their biases, before q/k norms and rotary) and `probs (B, H, T, S)`
        (added to the attention probabilities before they weight the values). Zeros change
        nothing, and the gradient of a loss with respect to a tap is its gradient with respect to
        the tapped activation.
    Returns:
      `(out, internals)`: `out (B, T, E)` is `sum_h ctx_h @ o[h]` (+ `o_bias`); `internals` holds
      the projections `q`, `k`, `v` and the attention probabilities `probs (B, H, T, S)` per query
      head, taps included.
    """
    chex.assert_rank(x, 3)
    H, D, E = attn["q"].shape
    KV = attn["k"].shape[0]
    chex.assert_shape(attn["k"], (KV, D, E))
    chex.assert_shape(attn["v"], (KV, D, E))
    chex.assert_shape(attn["o"], (H, D, E))
    B, T, _ = x.shape
    q, k, v = (_project(x, attn[name]) for name in ("q", "k", "v"))
    if "q_bias" in attn:
        q = q + attn["q_bias"]
    if "k_bias" in attn:
        k = k + attn["k_bias"]
    if "v_bias" in attn:
        v = v + attn["v_bias"]
    taps = taps or {}
    q, k, v = (x + taps[name].reshape(x.shape) if name in taps else x for name, x in (("q", q), ("k", k), ("v", v)))
    internals = {"q": q, "k": k, "v": v}
    if qk_norm == "head":
        q = rms_norm(q, attn["q_norm"], eps, norm_offset)
        k = rms_norm(k, attn["k_norm"], eps, norm_offset)
    elif qk_norm == "projection":
        q = rms_norm(q.reshape(B, T, H * D), attn["q_norm"], eps, norm_offset).reshape(B, T, H, D)
        k = rms_norm(k.reshape(B, T, KV * D), attn["k_norm"], eps, norm_offset).reshape(B, T, KV, D)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = q.reshape(B, T, KV, H // KV, D)  # head h = kv * G + g
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k) * scale
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if "probs" in taps:
        probs = probs + taps["probs"].reshape(probs.shape)
    ctx = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(B, T, H, D)
    out = _matmul(ctx.reshape(B, T, H * D), attn["o"].reshape(H * D, E))
    if "o_bias" in attn:
        out = out + attn["o_bias"]
    return out, {**internals, "probs": probs.reshape(B, H, T, T)}


def gated_mlp(x: Array, mlp: Mapping[str, Array], activation: str) -> Array:
    """`down(act(gate(x)) * up(x))` with optional biases.

    Args:
      x: `(B, T, E)`.
      mlp: `gate`/`up (F, E)`, `down (E, F)`; optional `gate_bias`/`up_bias (F,)`, `down_bias (E,)`.
    Returns:
      `(B, T, E)`.
    """
    act = ACTIVATIONS[activation]
    gate = _matmul(x, mlp["gate"].T)
    up = _matmul(x, mlp["up"].T)
    if "gate_bias" in mlp:
        gate = gate + mlp["gate_bias"]
    if "up_bias" in mlp:
        up = up + mlp["up_bias"]
    out = _matmul(act(gate) * up, mlp["down"].T)
    if "down_bias" in mlp:
        out = out + mlp["down_bias"]
    return out


def dense_mlp(x: Array, mlp: Mapping[str, Array], activation: str) -> Array:
    """`down(act(up(x)))` with optional biases (GPT-2, GPT-NeoX).

    Args:
      x: `(B, T, E)`.
      mlp: `up (F, E)`, `down (E, F)`; optional `up_bias (F,)`, `down_bias (E,)`.
    Returns:
      `(B, T, E)`.
    """
    up = _matmul(x, mlp["up"].T)
    if "up_bias" in mlp:
        up = up + mlp["up_bias"]
    out = _matmul(ACTIVATIONS[activation](up), mlp["down"].T)
    if "down_bias" in mlp:
        out = out + mlp["down_bias"]
    return out
