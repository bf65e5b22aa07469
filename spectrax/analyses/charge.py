"""The Noether charge of the attention reparametrization, the balanced point, and the laws there
(docs/statistics.md §6).

The reparametrization of `gauge` (per key/value group g: `W_Q,h -> A W_Q,h` for the group's query
heads, `W_K,g -> A^-T W_K,g`, A commuting with the rotary rotations) is a continuous symmetry of
any loss of the model. For a symmetric generator M of it (A = exp(lambda M)), d/d lambda of the
loss is `<grad_Q, M W_Q> - <grad_K, M W_K> = 0`, so under gradient flow the charge

    tr(M C_g),   C_g = sum_{h in g} W_Q,h W_Q,h^T - W_K,g W_K,g^T   (D x D)

is conserved ("Noether's Learning Dynamics", Tanaka & Kunin, NeurIPS 2021; "Neural Mechanics",
Kunin et al., ICLR 2021). The symmetric matrices commuting with the rotary rotations are a scalar
per frequency pair and any symmetric matrix on the features that do not rotate, so what is
conserved is `P(C_g)`, P the orthogonal projection onto them: per pair (i, i + R/2) the difference
of the pair's squared row norms, and the whole pass-through block of C_g. Without RoPE, P = 1.
One step of SGD with coupled weight decay gamma, `theta' = (1 - lr gamma) theta - lr g`, gives
exactly (no first-order term, by the symmetry)

    P(C)_{t+1} = (1 - lr gamma)^2 P(C)_t + lr^2 P(G_Q G_Q^T - G_K G_K^T)_t,

so with gamma = 0 the charge moves only at O(lr^2) per step (conserved in the flow limit), and with
decay it shrinks as `(1 - lr gamma)^(2t)`, i.e. `exp(-2 gamma tau)` in gradient-flow time
`tau = lr t`, plus the same O(lr^2) term. The output side (`W_V,g -> B W_V,g`,
`W_O,h -> W_O,h B^-1`, no RoPE) has the charge `W_V,g W_V,g^T - sum_h W_O,h^T W_O,h`.

The balanced point of a group's orbit is where the charge vanishes. Without RoPE: stack the
group's query heads side by side, `Q~ = [W_Q,h1 ... W_Q,hG] (D, G E)`, take the SVD
`Q~^T W_K = U S V^T` (factored, never formed), and set `Q~ = S^1/2 U^T`, `W_K = S^1/2 V^T`: the
logits are unchanged and `Q~ Q~^T = S = W_K W_K^T`. For one query head per group (no GQA) the Q and
K spectra are then identical, so `pearson_qk = 1`, `ssr_qk = 0`, `alpha_qk = 1` and `cos_u_qk = 1`
exactly: these laws are what balance looks like. With GQA the group's stacked query matrix has
K's spectrum, not each head. With RoPE each pair is rescaled by `(|K_pair|^2 / |Q_pair|^2)^(1/4)`
(Q rows) and its inverse (K rows), and the pass-through block balanced by the SVD: the per-pair
norms then agree, but the spectra need not. The balanced point is unique up to rotations that
turn Q and K together, so every statistic evaluated there is itself gauge invariant: the
invariant counterpart of each law (`gauge.COUNTERPARTS`). Biases are not folded in (as in the
laws); with biases the conserved charge also holds `b_q b_q^T - b_k b_k^T`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from spectrax.backend import array_elements, jit
from spectrax import spectral as sp
from spectrax.analyses.aggregate import layer_means, model_values, shown_z
from spectrax.analyses.base import Analysis, LayerInput, LayerOutput, Options, Section, Tables
from spectrax.analyses.gauge import rotary_dim, rotary_pairs
from spectrax.analyses.tables import format_number, list_markdown

__all__ = [
    "BALANCED_STATISTICS",
    "CHARGES",
    "ChargeSummary",
    "analysis",
    "balance",
    "charge_layer",
    "charge_statistics",
    "commutant",
    "group_charge",
    "render",
    "summarize",
]

_SPECTRUM = ("sigma_max", "cond", "erank", "stable_rank", "max_mean")
_SPECTRA_PAIR = ("pearson", "ssr", "alpha", "alpha_mse")
CHARGES = ("qk_charge", "qk_charge_trace", "ov_charge", "ov_charge_trace")
BALANCED_STATISTICS = (
    tuple(f"{s}_{t}_balanced" for t in ("qk", "qv", "kv") for s in (*_SPECTRA_PAIR, "cos_v"))
    + ("cos_u_qk_balanced",)
    + tuple(f"{s}_{m}_balanced" for m in ("q", "k", "v") for s in _SPECTRUM)
)
# (law, its value on the claim) whose departure the charge may account for
_SHARES = (("pearson_qk", 1.0), ("ssr_qk", 0.0))

_HIGHEST = jax.lax.Precision.HIGHEST


@functools.partial(jit, static_argnames=("rotary_dim",))
def commutant(m: jax.Array, rotary_dim: int) -> jax.Array:
    """Orthogonal projection of `m (..., D, D)` onto the matrices commuting with RoPE's rotations.

    Each rotary pair `(i, i + R/2)` keeps the mean of its two diagonal entries times the 2x2
    identity (the symmetric part of a scaled rotation); the `D - R` features that do not rotate
    keep their block; every other entry is zero. `rotary_dim = 0` returns `m`.
    """
    D = m.shape[-1]
    lo, hi = rotary_pairs(D, rotary_dim)
    if not rotary_dim:
        return m
    out = jnp.zeros_like(m).at[..., rotary_dim:, rotary_dim:].set(m[..., rotary_dim:, rotary_dim:])
    mean = 0.5 * (m[..., lo, lo] + m[..., hi, hi])
    return out.at[..., lo, lo].set(mean).at[..., hi, hi].set(mean)


def _gram(x):
    return jnp.matmul(x, jnp.swapaxes(x, -1, -2), precision=_HIGHEST)


def _grouped(x, kv: int):
    """`(H, D, E)` -> `(KV, G, D, E)`: the query heads of each key/value group."""
    return x.reshape(kv, x.shape[0] // kv, *x.shape[1:])


@functools.partial(jit, static_argnames=("rotary_dim",))
def group_charge(x: ArrayLike, y: ArrayLike, rotary_dim: int = 0) -> tuple[jax.Array, jax.Array]:
    """The conserved charge of each key/value group and the scale it is judged against.

    Args:
      x: `(H, D, E)` query-side heads (W_Q,h; or `o[h] = W_O,h^T` for the output side).
      y: `(KV, D, E)` key-side heads (W_K,g; or W_V,g).
      rotary_dim: R (0 without RoPE, and always 0 for the output side).
    Returns:
      `(P(C_g), P(S_g))`, each `(KV, D, D)`: `C_g = sum_h X_h X_h^T - Y_g Y_g^T` and
      `S_g = sum_h X_h X_h^T + Y_g Y_g^T` projected by `commutant`. `|P(C)|_F <= |P(S)|_F` always.
    """
    plus = jnp.sum(_gram(_grouped(x, y.shape[0])), axis=1)
    minus = _gram(y)
    return commutant(plus - minus, rotary_dim), commutant(plus + minus, rotary_dim)


def _charge_sizes(x, y, rotary_dim: int) -> tuple[jax.Array, jax.Array]:
    """`(KV,)` normalized size |P(C)|_F / |P(S)|_F in [0, 1] and signed trace share tr C / tr S in [-1, 1]."""
    c, s = group_charge(x, y, rotary_dim)
    size = jnp.sqrt(jnp.sum(c * c, axis=(-2, -1)) / jnp.sum(s * s, axis=(-2, -1)))
    trace = jnp.trace(c, axis1=-2, axis2=-1) / jnp.trace(s, axis1=-2, axis2=-1)
    return size, trace


@functools.partial(jit, static_argnames=("rotary_dim",))
def balance(x: ArrayLike, y: ArrayLike, rotary_dim: int = 0) -> tuple[jax.Array, jax.Array]:
    """The balanced point of each group's gauge orbit (module docstring): same logits, zero charge.

    Args:
      x: `(H, D, E)` query-side heads; y: `(KV, D, E)` key-side heads, `D <= E`.
      rotary_dim: R; pairs `(i, i + R/2)` are rescaled, the other `D - R` rows balanced by an SVD.
    Returns:
      `(x_bal (H, D, E), y_bal (KV, D, E))` with `x_bal[h]^T y_bal[g] = x[h]^T y[g]` (for R = 0;
      with RoPE every rotated form is kept) and `group_charge(x_bal, y_bal) = 0`. A pair whose
      query or key rows are all zero contributes nothing to the logits and is set to zero on both
      sides (the orbit's limit).
    """
    H, D, E = x.shape
    KV = y.shape[0]
    lo, hi = rotary_pairs(D, rotary_dim)
    xg = _grouped(x, KV)
    rows_q = jnp.sum(xg * xg, axis=(1, 3))  # (KV, D) squared norm of each row over the group
    rows_k = jnp.sum(y * y, axis=-1)
    pair_q, pair_k = rows_q[:, lo] + rows_q[:, hi], rows_k[:, lo] + rows_k[:, hi]
    live = (pair_q > 0) & (pair_k > 0)
    ratio = (jnp.where(live, pair_k, 1.0) / jnp.where(live, pair_q, 1.0)) ** 0.25
    rho, inverse = jnp.where(live, ratio, 0.0), jnp.where(live, 1.0 / ratio, 0.0)
    scale_q = jnp.ones((KV, D), x.dtype).at[:, lo].set(rho).at[:, hi].set(rho)
    scale_k = jnp.ones((KV, D), x.dtype).at[:, lo].set(inverse).at[:, hi].set(inverse)
    xg = xg * scale_q[:, None, :, None]
    y = y * scale_k[:, :, None]
    if rotary_dim < D:
        R, G = rotary_dim, H // KV
        stacked = jnp.swapaxes(xg[:, :, R:], 1, 2).reshape(KV, D - R, G * E)  # (KV, D - R, G E)
        u, s, v = sp.factored_svd(stacked, y[:, R:])
        root = jnp.sqrt(s)[..., None]
        xp = jnp.swapaxes((root * jnp.swapaxes(u, -1, -2)).reshape(KV, D - R, G, E), 1, 2)
        xg = xg.at[:, :, R:].set(xp)
        y = y.at[:, R:].set(root * jnp.swapaxes(v, -1, -2))
    return xg.reshape(H, D, E), y


def _svd(x) -> sp.SVDResult:
    """Thin SVD `(u (..., D, D), s, v (..., E, D))`; the statistics here are sign-free."""
    u, s, vh = jnp.linalg.svd(x, full_matrices=False)
    return sp.SVDResult(u, s, jnp.swapaxes(vh, -1, -2))


def _laws(q, k, v) -> dict[str, jax.Array]:
    """The laws' statistics (`laws.head_laws`' definitions) that `BALANCED_STATISTICS` evaluates,
    `{name: (H,)}`, from q `(H, D, E)`, k/v `(KV, D, E)`."""
    kv_of = sp.kv_head_index(q.shape[0], k.shape[0])
    dq, dk, dv = (_svd(m) for m in (q, k, v))
    dk, dv = (jax.tree.map(lambda a: a[kv_of], d) for d in (dk, dv))
    out = {}
    for tag, a, b in (("qk", dq, dk), ("qv", dq, dv), ("kv", dk, dv)):
        pair = sp.spectra_pair_statistics(a.s, b.s)
        out.update({f"{s}_{tag}": pair[s] for s in _SPECTRA_PAIR})
        out[f"cos_v_{tag}"] = sp.mean_abs_cos(a.v, b.v)
    out["cos_u_qk"] = sp.mean_abs_cos(dq.u, dk.u)
    for m, d in (("q", dq), ("k", dk), ("v", dv)):
        single = sp.singular_value_statistics(d.s)
        out.update({f"{s}_{m}": single[s] for s in _SPECTRUM})
    return out


@functools.partial(jit, static_argnames=("rotary_dim",))
def charge_statistics(q: ArrayLike, k: ArrayLike, v: ArrayLike, o: ArrayLike, rotary_dim: int) -> dict[str, jax.Array]:
    """Per query head: `CHARGES` (of its group), `BALANCED_STATISTICS`, and the raw `pearson_qk`,
    `ssr_qk` the shares are computed from. q/o `(H, D, E)`, k/v `(KV, D, E)`; `{name: (H,)}`."""
    H, KV = q.shape[0], k.shape[0]
    kv_of = sp.kv_head_index(H, KV)
    out = {}
    for tag, x, y, R in (("qk", q, k, rotary_dim), ("ov", o, v, 0)):
        size, trace = _charge_sizes(x, y, R)
        out[f"{tag}_charge"], out[f"{tag}_charge_trace"] = size[kv_of], trace[kv_of]
    qb, kb = balance(q, k, rotary_dim)
    _, vb = balance(o, v, 0)
    out.update({f"{name}_balanced": value for name, value in _laws(qb, kb, vb).items()})
    raw = sp.spectra_pair_statistics(jnp.linalg.svd(q, compute_uv=False), jnp.linalg.svd(k, compute_uv=False)[kv_of])
    out.update({name: raw[name.removesuffix("_qk")] for name, _ in _SHARES})
    return out


def _rms(x):
    return jnp.sqrt(jnp.mean(x * x, axis=(-2, -1), keepdims=True))


@functools.partial(jit, static_argnames=("rotary_dim", "num_draws"),
                   work=lambda a: a["num_draws"] * array_elements([a["q"], a["k"], a["v"], a["o"]]))
def _null_draws(key, q, k, v, o, rotary_dim: int, num_draws: int) -> dict[str, jax.Array]:
    """`{name: (num_draws, H)}`: `charge_statistics` of Gaussian heads of the real shapes, each
    scaled to the RMS entry of its real counterpart (K/V heads drawn once per group, as the real)."""
    scales = tuple(_rms(m) for m in (q, k, v, o))

    def draw(key_i):
        keys = jax.random.split(key_i, 4)
        fake = [jax.random.normal(kk, m.shape, m.dtype) * s for kk, m, s in zip(keys, (q, k, v, o), scales)]
        return charge_statistics(*fake, rotary_dim=rotary_dim)

    return jax.lax.map(draw, jax.random.split(key, num_draws))


def charge_layer(attn: dict, key: jax.Array, *, rotary_dim: int, num_draws: int = 16) -> dict[str, np.ndarray]:
    """Rows for one unstacked layer: per query head its group's charge, the laws at the balanced
    point, and how much of each law's departure the charge accounts for.

    Args:
      attn: `q`/`o (H, D, E)`, `k`/`v (KV, D, E)`, `D <= E`, any float dtype (other keys ignored).
      key: PRNG key of the Monte Carlo nulls.
      rotary_dim: R, each head's rotating features (`gauge.rotary_dim(spec, D)`; 0 without RoPE).
      num_draws: Monte Carlo draws (>= 2; 0: NaN nulls).
    Returns:
      `{column: (H,)}`: `head`, `kv_head`; `qk_charge`, `ov_charge` (normalized size
      `|P(C)|_F / |P(S)|_F` of the group's charge: 0 balanced, 1 one side all); `qk_charge_trace`,
      `ov_charge_trace` (signed `tr C / tr S`: > 0 where the query (output) side carries more of
      the norm); every `BALANCED_STATISTICS` column; each of these with `_null_mean`, `_null_std`,
      `_z`, `_pct` over Gaussian heads of the real shapes and RMS; and `pearson_qk_charge_share`,
      `ssr_qk_charge_share`: `(d - d_bal) / d` with d the law's departure from its claim (|1 -
      pearson|, ssr) and d_bal that at the balanced point: 1 when balancing removes the whole
      departure, 0 when the charge explains none of it, negative when balancing departs further.
      For models with q/k norms (`spec.qk_norm`) the QK symmetry does not exist, and only the
      `ov_*` columns keep their meaning.
    """
    q, k, v, o = (jnp.asarray(attn[m]) for m in ("q", "k", "v", "o"))
    q, k, v, o = (m if m.dtype == jnp.float64 else m.astype(jnp.float32) for m in (q, k, v, o))
    chex.assert_rank([q, k, v, o], 3)
    H, D, E = q.shape
    KV = k.shape[0]
    chex.assert_shape([k, v], (KV, D, E))
    chex.assert_shape(o, (H, D, E))
    sp.group_size(H, KV)
    if D > E:
        raise ValueError(f"head_dim {D} > hidden {E}: the balanced point needs D <= E")
    if num_draws == 1 or num_draws < 0:
        raise ValueError(f"num_draws must be 0 (no Monte Carlo null) or >= 2 for a null std, got {num_draws}")
    rotary_pairs(D, rotary_dim)
    observed = charge_statistics(q, k, v, o, rotary_dim=rotary_dim)
    if num_draws == 0:
        nan = np.full(H, np.nan, np.float32)
        nulls = {name: sp.NullSummary(nan, nan, np.zeros((0, H), np.float32)) for name in CHARGES + BALANCED_STATISTICS}
    else:
        draws = _null_draws(key, q, k, v, o, rotary_dim=rotary_dim, num_draws=num_draws)
        nulls = {name: sp.NullSummary(jnp.mean(d, axis=0), jnp.std(d, axis=0, ddof=1), d)
                 for name, d in draws.items() if name in CHARGES + BALANCED_STATISTICS}
    shown = {name: observed[name] for name in CHARGES + BALANCED_STATISTICS}
    cols = {"head": np.arange(H), "kv_head": sp.kv_head_index(H, KV)}
    cols.update({name: np.asarray(value) for name, value in sp.null_columns(shown, nulls).items()})
    for law, claim in _SHARES:
        raw = np.abs(np.asarray(observed[law], np.float64) - claim)
        bal = np.abs(np.asarray(observed[f"{law}_balanced"], np.float64) - claim)
        with np.errstate(invalid="ignore", divide="ignore"):
            cols[f"{law}_charge_share"] = np.where(raw > 0, (raw - bal) / raw, np.nan)
    return cols


# ----------------------------------------------------------------------------- the analysis

HEADLINE = ("qk_charge", "ov_charge", "pearson_qk_balanced", "ssr_qk_balanced")


def _keeps_meaning(column: str) -> bool:
    """Whether a column means something when q/k norms break the QK symmetry: the OV side only."""
    return column in ("head", "kv_head") or column.startswith("ov_") or "_v_balanced" in column


def _layer_rows(inputs: LayerInput, key: jax.Array, options: Options) -> LayerOutput:
    """`charge_layer` of one layer, its rotary dimension from the checkpoint's spec; with q/k norms
    every QK-side column is NaN (the symmetry it measures does not exist there)."""
    if inputs.spec is None:
        raise ValueError("the charge analysis needs the checkpoint's ModelSpec (its rotary dimension)")
    attn = {m: np.asarray(inputs.params["attn"][m][0]) for m in ("q", "k", "v", "o")}
    cols = charge_layer(attn, key, rotary_dim=rotary_dim(inputs.spec, attn["q"].shape[1]), num_draws=options.num_draws)
    if inputs.spec.qk_norm is not None:
        cols = {c: v if _keeps_meaning(c) else np.full(np.shape(v), np.nan, np.float32) for c, v in cols.items()}
    return LayerOutput(cols)


@dataclasses.dataclass(frozen=True)
class ChargeSummary:
    """`model`: per `HEADLINE` statistic, `aggregate.model_values` (mean over layers, null, z, effect
    sizes); `charge_share`: the median over heads of `pearson_qk_charge_share`, `ssr_qk_charge_share`;
    `qk_norm`: whether the model normalizes q/k (then only the OV side has a charge)."""

    model: Mapping[str, Mapping[str, object]]
    charge_share: Mapping[str, float | None]
    qk_norm: bool

    def to_json(self) -> dict:
        return {"model": dict(self.model), "charge_share": dict(self.charge_share), "qk_norm": self.qk_norm}


def summarize(tables: Tables, spec, options: Options) -> ChargeSummary:
    heads = tables.heads
    per_layer = layer_means(heads, HEADLINE)
    share = {}
    for law, _ in _SHARES:
        values = np.asarray(heads[f"{law}_charge_share"], float)
        share[law] = float(np.median(values[np.isfinite(values)])) if np.isfinite(values).any() else None
    return ChargeSummary({stat: model_values(heads, per_layer, stat) for stat in HEADLINE}, share,
                         getattr(spec, "qk_norm", None) is not None)


def render(summary: ChargeSummary) -> Section:
    """The report's section on the charge and the laws at the balanced point."""
    rows: dict[str, list] = {"statistic": [], "mean over layers": [], "null mean": [], "difference": [], "ratio": [],
                             "z of the mean": []}
    for stat, v in summary.model.items():
        for column, key in (("statistic", None), ("mean over layers", "mean_over_layers"), ("null mean", "null_mean"),
                            ("difference", "diff"), ("ratio", "ratio"), ("z of the mean", "z")):
            value = stat if key is None else v.get(key)
            rows[column].append(shown_z(v) if key == "z" else value)
    share = summary.charge_share
    lines = [
        "## The symmetry's charge (charge)",
        "",
        "Attention is unchanged by W_Q,h → A W_Q,h, W_K,g → A⁻ᵀ W_K,g (A commuting with the rotary rotations, one per "
        "key/value group) and W_V,g → B W_V,g, W_O,h → W_O,h B⁻¹. Gradient descent conserves the symmetry's charge "
        "C = Σ_h W_Q,h W_Q,hᵀ − W_K,g W_K,gᵀ (with RoPE its per-frequency-pair part) and weight decay drives it to zero "
        "(Tanaka & Kunin, \"Noether's Learning Dynamics\", NeurIPS 2021; Kunin et al., \"Neural Mechanics\", ICLR 2021). "
        "`qk_charge`, `ov_charge`: its normalized size |P(C)| / |P(S)| per group (0 balanced, 1 one side all); "
        "`*_balanced`: the laws at the balanced point of the orbit (zero charge, the same function), the invariant "
        "counterparts of the laws. Each against Gaussian heads of the same shapes and scales.",
        "",
        list_markdown(rows),
        "",
        f"- Share of the Q/K laws' departure that balancing removes (median over heads; 1: all of it, 0: none): "
        f"pearson_qk {format_number(share.get('pearson_qk'))}, ssr_qk {format_number(share.get('ssr_qk'))}.",
    ]
    if summary.qk_norm:
        lines.append("- This model normalizes queries and keys: the QK symmetry does not exist, so only the OV side "
                     "(`ov_*`, `*_v_balanced`) is reported; the QK columns are empty.")
    lines.append("")
    return Section("\n".join(lines))


analysis = Analysis(name="charge", table="heads", layer_rows=_layer_rows, summarize=summarize, render=render,
                    key_id=4, headline=HEADLINE, reads=("attn",))
