"""The attention reparametrization (gauge) and which statistics it leaves alone (docs/statistics.md §5).

Attention logits depend on `W_Q,h` and `W_K,g` only through the rotated bilinear form
`(R_t W_Q,h x)^T (R_s W_K,g y)`, and the output on `W_O,h` and `W_V,g` only through `W_O,h W_V,g`.
So, per key/value head g and every query head h of its group,

    W_Q,h -> A_g W_Q,h,   W_K,g -> A_g^-T W_K,g,   W_V,g -> B_g W_V,g,   W_O,h -> W_O,h B_g^-1

(biases of q, k and v transformed like their rows) leave every output of the model unchanged when

- A_g is shared by the query heads of group g: they read the same keys, so `A_h^T M_g = I` for one
  key-side `M_g` forces one A per group (the same holds for B_g and the output blocks);
- A_g commutes with every rotary rotation `R_t`: with the default RoPE the pair `(i, i + R/2)` of
  the canonical half-split layout turns at its own frequency, so A_g is block diagonal with a
  scaled rotation `[[a, -b], [b, a]]` on each pair (a complex number per frequency) and any
  invertible matrix on the `D - R` features that do not rotate (partial rotary; all D without RoPE);
- no q/k norm sits between W_Q, W_K and the logits: a per-head RMS norm (qwen3, gemma3) or a norm
  over the whole projection (olmo2) does not commute with A, so those models keep A = I here
  (their exact QK symmetries are discrete sign flips); B is unrestricted everywhere.

`reparametrize` applies a random such transformation to a loaded checkpoint's canonical tree.
`INVARIANCE` says for every column of `laws.laws_layer` and `kernel.kernel_layer` whether it is a
property of the attention function ("invariant") or of the parametrization training reached
("parametrization"); null columns count as invariant only when the null depends on shapes alone
(scale-matched Gaussian nulls of scale-dependent statistics move with the weights' scale).
`COUNTERPARTS` names the invariant column standing in for each parametrization-dependent law:
the same statistic at the balanced point of the gauge orbit (`charge.charge_layer`), or the
spectrum of the bilinear forms `W_Q,h^T W_K,g` and `W_O,h W_V,g` (`forms_layer`).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import numpy as np

from spectrax import spectral as sp
from spectrax.analyses import kernel
from spectrax.io.config import ModelSpec

__all__ = [
    "BOOKKEEPING",
    "COUNTERPARTS",
    "INVARIANCE",
    "forms_layer",
    "gauge_matrices",
    "invariance",
    "reparametrize",
    "reparametrize_attention",
    "rotary_dim",
    "rotary_pairs",
]

Tree = dict[str, Any]

# ----------------------------------------------------------------------------- the transformation


def rotary_dim(spec: ModelSpec, head_dim: int) -> int:
    """Number R of each head's features that rotate (0 without RoPE), as the forward pass uses it."""
    from spectrax.models.decoder import decoder_options  # models import io; keep this module light

    return int(head_dim * decoder_options(spec).rotary_fraction)


def rotary_pairs(D: int, R: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the rotary pairs `(i, i + R/2)`, i < R/2, in the canonical half-split layout."""
    if R % 2 or not 0 <= R <= D:
        raise ValueError(f"rotary dimension {R} must be even and within the head dimension {D}")
    half = np.arange(R // 2)
    return half, half + R // 2


def gauge_matrices(key: jax.Array, shape: tuple[int, ...], D: int, R: int, *, spread: float = 0.5) -> np.ndarray:
    """Random invertible `(*shape, D, D)` float64 matrices commuting with RoPE's rotations.

    Each rotary pair `(i, i + R/2)` gets a scaled rotation `r [[cos p, -sin p], [sin p, cos p]]`
    with `log r ~ N(0, spread^2)` and p uniform; the `D - R` features that do not rotate get
    `Q_1 diag(exp(spread z)) Q_2^T` with Haar-random orthogonal Q's and z ~ N(0, 1). Condition
    numbers stay near `exp(4 spread)`, so float32 forward passes keep their precision.
    """
    kr, kp, kz, k1, k2 = jax.random.split(key, 5)
    lo, hi = rotary_pairs(D, R)
    a = np.zeros((*shape, D, D))
    if R:
        r = np.exp(spread * np.asarray(jax.random.normal(kr, (*shape, R // 2)), np.float64))
        p = np.asarray(jax.random.uniform(kp, (*shape, R // 2), maxval=2 * np.pi), np.float64)
        c, s = r * np.cos(p), r * np.sin(p)
        a[..., lo, lo], a[..., lo, hi], a[..., hi, lo], a[..., hi, hi] = c, -s, s, c
    P = D - R
    if P:
        z = np.exp(spread * np.asarray(jax.random.normal(kz, (*shape, P)), np.float64))
        q1, q2 = (_orthogonal(k, (*shape, P)) for k in (k1, k2))
        a[..., R:, R:] = (q1 * z[..., None, :]) @ np.swapaxes(q2, -1, -2)
    return a


def _orthogonal(key: jax.Array, shape: tuple[int, ...]) -> np.ndarray:
    """Haar-random orthogonal `(*shape[:-1], n, n)` matrices, n = shape[-1] (QR of a Gaussian, signs fixed)."""
    n = shape[-1]
    g = np.asarray(jax.random.normal(key, (*shape, n)), np.float64)
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]


def _per_query_head(m: np.ndarray, H: int) -> np.ndarray:
    """`(..., KV, D, D)` per key/value head -> `(..., H, D, D)` per query head (its group's matrix)."""
    return m[..., sp.kv_head_index(H, m.shape[-3]), :, :]


def _apply(m: np.ndarray, x) -> np.ndarray:
    """`m (..., D, D)` times each head's rows: x `(..., D, E)` or a bias `(..., D)`."""
    x = np.asarray(x, np.float64)
    if x.ndim == m.ndim:
        return m @ x
    return (m @ x[..., None])[..., 0]


def reparametrize_attention(attn: Tree, key: jax.Array, *, rotary_dim: int, qk: bool = True,
                            spread: float = 0.5) -> Tree:
    """A random function-preserving reparametrization of canonical attention weights.

    Args:
      attn: `q (..., H, D, E)`, `k`/`v (..., KV, D, E)`, `o (..., H, D, E)` (o[h] = W_O,h^T), optional
        `{q,k,v}_bias (..., heads, D)`; leading axes (stacked layers) each get their own matrices.
        Other keys are passed through.
      key: PRNG key.
      rotary_dim: R, the rotating features per head (`rotary_dim(spec, D)`), 0 without RoPE.
      qk: transform W_Q/W_K (False for models with q/k norms, whose QK symmetry is discrete).
      spread: log-scale spread of the random matrices (`gauge_matrices`).
    Returns:
      A new dict: `q -> A q`, `k -> A^-T k`, `v -> B v`, `o -> B^-T o` (W_O -> W_O B^-1), biases
      likewise, A and B drawn per (leading index, KV head). Transformed leaves are float32 (float64
      when they were), so a bf16 checkpoint's transform is not rounded back to bf16.
    """
    q, k = attn["q"], attn["k"]
    chex.assert_rank([q, k], q.ndim)
    *lead, H, D, E = q.shape
    KV = k.shape[-3]
    chex.assert_shape(k, (*lead, KV, D, E))
    chex.assert_shape([attn["v"]], (*lead, KV, D, E))
    chex.assert_shape([attn["o"]], (*lead, H, D, E))
    ka, kb = jax.random.split(key)
    out = dict(attn)
    a = gauge_matrices(ka, (*lead, KV), D, rotary_dim, spread=spread) if qk else None
    b = gauge_matrices(kb, (*lead, KV), D, 0, spread=spread)
    b_inv_t = np.swapaxes(np.linalg.inv(b), -1, -2)
    new = {"v": b, "o": _per_query_head(b_inv_t, H)}
    if qk:
        new["q"] = _per_query_head(a, H)
        new["k"] = np.swapaxes(np.linalg.inv(a), -1, -2)
    for name, m in new.items():
        # o_bias (E,) is added after the output projection: no transformation reaches it
        for leaf in (name,) if name == "o" else (name, f"{name}_bias"):
            if leaf in attn:
                out[leaf] = _apply(m, attn[leaf]).astype(_result_dtype(attn[leaf]))
    return out


def _result_dtype(x) -> np.dtype:
    return np.dtype(np.float64) if np.asarray(x).dtype == np.float64 else np.dtype(np.float32)


def reparametrize(params: Tree, spec: ModelSpec, key: jax.Array, *, spread: float = 0.5) -> Tree:
    """A random function-preserving reparametrization of a loaded model (`spectrax.load(...).params`).

    Every layer of every group gets its own A_g and B_g per key/value head (`reparametrize_attention`);
    RoPE restricts A as the forward pass rotates (`rotary_dim`), and models with q/k norms keep
    W_Q, W_K as they are. Returns a new tree sharing every untouched leaf with `params` (nothing is
    written into `params`). `forward` gives the same logits up to float32 rounding.
    """
    groups = []
    for g, group in enumerate(params["layers"]):
        D = np.shape(group["attn"]["q"])[-2]
        attn = reparametrize_attention(group["attn"], jax.random.fold_in(key, g), rotary_dim=rotary_dim(spec, D),
                                       qk=spec.qk_norm is None, spread=spread)
        groups.append({**group, "attn": attn})
    return {**params, "layers": tuple(groups)}


# ----------------------------------------------------------------------------- invariance of each column

# Per-head statistics of `laws.laws_layer` and `kernel.kernel_layer`, with whether the statistic is
# invariant and whether its null depends on shapes alone (scale-free statistic or exact null).
_PAIR_STATISTICS = {  # name: (invariant, null depends on shape only, Monte Carlo null)
    "pearson": (False, True, True), "ssr": (False, True, True), "alpha": (False, False, True),
    "alpha_mse": (False, False, True), "cos_u": (False, True, False), "cos_v": (False, True, False),
    "grassmann": (True, True, False),
}
_MATRIX_STATISTICS = {
    "sigma_max": (False, False, True), "cond": (False, True, True), "erank": (False, True, True),
    "stable_rank": (False, True, True), "max_mean": (False, True, True),
}
_KERNEL_STATISTICS = {
    "kernel_erank": (True, True, True), "kernel_erank_squared": (True, True, True),
    "kernel_stable_rank": (True, True, True), "kernel_sigma_max": (True, False, True),
    "ffn_alignment": (True, True, False),
}
BOOKKEEPING = frozenset({"head", "kv_head", "finite", "degenerate"})


def _classify(column: str, invariant: bool, null_by_shape: bool, monte_carlo: bool) -> dict[str, str]:
    word = {True: "invariant", False: "parametrization"}
    compared = word[invariant and null_by_shape]  # the statistic set against its null
    cols = {column: word[invariant], f"{column}_null_mean": word[null_by_shape], f"{column}_null_std": word[null_by_shape],
            f"{column}_z": compared, f"{column}_diff": compared, f"{column}_ratio": compared}
    if column != "ffn_alignment":  # the null std of a layer mean (every statistic with per-head draws or an exact null)
        for suffix in ("_layer_null_std", "_layer_null_std_se", "_layer_null_mean_se"):
            cols[column + suffix] = word[null_by_shape]
    if monte_carlo:
        cols[f"{column}_pct"] = compared
        cols[f"{column}_null_mean_se"] = cols[f"{column}_null_std_se"] = word[null_by_shape]
    return cols


def _invariance() -> dict[str, str]:
    out: dict[str, str] = {}
    for tag in ("qk", "qv", "kv"):
        for stat, flags in _PAIR_STATISTICS.items():
            out.update(_classify(f"{stat}_{tag}", *flags))
    for m in ("q", "k", "v"):
        for stat, flags in _MATRIX_STATISTICS.items():
            out.update(_classify(f"{stat}_{m}", *flags))
    for stat, flags in _KERNEL_STATISTICS.items():
        out.update(_classify(stat, *flags))
    return out


INVARIANCE: dict[str, str] = _invariance()
"""Every statistic column of `laws_layer` and `kernel_layer` (with its null columns) ->
`"invariant"` (a property of the attention function) or `"parametrization"` (moves under the
reparametrization above). Bookkeeping columns (`BOOKKEEPING`) are not statistics."""


def invariance(column: str) -> str | None:
    """`INVARIANCE[column]`, None for bookkeeping columns; an unknown column is refused by name."""
    if column in BOOKKEEPING:
        return None
    try:
        return INVARIANCE[column]
    except KeyError:
        raise ValueError(f"column {column!r} has no invariance class (spectrax.analyses.gauge.INVARIANCE)") from None


def _counterparts() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for tag in ("qk", "qv", "kv"):
        for stat in ("pearson", "ssr", "alpha", "alpha_mse", "cos_v"):
            out[f"{stat}_{tag}"] = f"{stat}_{tag}_balanced"
    # Only Q and K turn together at the balanced point; Q (or K) and V are fixed up to independent
    # rotations there, so their left singular vectors have no invariant comparison.
    out.update({"cos_u_qk": "cos_u_qk_balanced", "cos_u_qv": None, "cos_u_kv": None})
    for m in ("q", "k", "v"):
        for stat in _MATRIX_STATISTICS:
            out[f"{stat}_{m}"] = f"{stat}_{m}_balanced"
    return out


COUNTERPARTS: dict[str, str | None] = _counterparts()
"""Each parametrization-dependent statistic of `laws_layer` -> the invariant column standing in
for it: the same statistic at the balanced point of the gauge orbit (`charge.charge_layer`), or
None where none exists. The spectra of the forms themselves are `forms_layer`'s `qk_*`/`ov_*`."""


# ----------------------------------------------------------------------------- bilinear forms


def forms_layer(attn: Tree, key: jax.Array, *, num_draws: int = 16) -> dict[str, np.ndarray]:
    """Spectra of each head's QK form `W_Q,h^T W_K,g` and OV form `W_O,h W_V,g` (both invariant).

    Args:
      attn: one unstacked layer: `q`/`o (H, D, E)`, `k`/`v (KV, D, E)`, `D <= E`.
      key: PRNG key of the Monte Carlo nulls.
      num_draws: draws per null (>= 2).
    Returns:
      `{column: (H,)}`: `head`, `kv_head`, and `qk_<s>`, `ov_<s>` for s in erank, erank_squared,
      stable_rank, sigma_max (Roy-Vetterli effective rank of the singular values, of their
      squares, sum s^2 / s_1^2, s_1), each with `_null_mean`, `_null_std`, `_z`, `_pct`. Singular
      values come from `spectral.factored` (never the E x E product); nulls are those of
      `kernel.kernel_null`: Gaussian factors of the real shapes scaled to each real matrix's RMS
      (exact in law, with the K/V side shared within a group as the real one is). The
      `sigma_max` nulls follow the weights' scale and so depend on the parametrization.
    """
    H, KV = np.shape(attn["q"])[0], np.shape(attn["k"])[0]
    kq, ko = jax.random.split(key)
    cols: dict[str, np.ndarray] = {"head": np.arange(H), "kv_head": sp.kv_head_index(H, KV)}
    for tag, (a, b), k in (("qk", ("q", "k"), kq), ("ov", ("o", "v"), ko)):
        x, y = (np.asarray(attn[m], _result_dtype(attn[m])) for m in (a, b))
        s = sp.qk_kernel_singular_values(x, y)
        observed = kernel.kernel_statistics(s)
        nulls = kernel.kernel_null(k, x, y, num_draws=num_draws)
        for name, value in sp.null_columns(observed, nulls).items():
            cols[f"{tag}_{name.removeprefix('kernel_')}"] = np.asarray(value)
    return cols
