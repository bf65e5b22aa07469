"""Activation spectroscopy: what flows through a checkpoint, measured with the kernels used on weights.

Three analyses of the activations `spectrax.models.capture` / `activation_grads` return, each
beside its null:

- `hidden_state_rows`: per layer, the spectrum of the centered residual stream (N = B*T samples in
  R^E): effective/stable rank, max/mean and KS distances to Marchenko-Pastur (`rank`'s statistics)
  and the ESD fits (`esd`'s), against isotropic Gaussian samples of the same N, E and total
  variance (whose covariance spectrum is Marchenko-Pastur). A stream that is far lower-rank than
  its null has z << 0.
- `subspace_energy_rows`: the subspace document's "phase 2". For activation differences `D (N, E)`
  (e.g. the same prompt in two languages) and a weight-derived k-dim subspace (e.g. a head's top-k
  QK-kernel vectors), the energy fraction ||D P||^2 / ||D||^2. Chance is exactly k/E for a uniformly
  random subspace; its std is exact too (`kernel.ffn_alignment_null`, from D's spectrum), and a
  Monte Carlo over Haar-random subspaces checks it and gives a percentile.
- `projection_alignment_rows`: H/G/Z alignments (docs/dynamics.md, Setups) of each layer's q/k/v projections on
  real inputs: h_a is the normed residual stream entering attention, h_b the projection `W h_a + b`,
  g_b the loss gradient at h_b, W the projection matrix; each alignment beside the random-basis null
  of `spectral.alignment`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectrax.backend import jit
from spectrax import spectral as sp
from spectrax.analyses.kernel import ffn_alignment_null
from spectrax.analyses.registry import matrix_table
from spectrax.spectral import alignment as al

__all__ = [
    "centered_samples",
    "hidden_state_rows",
    "subspace_energy",
    "random_subspace_energy",
    "subspace_energy_rows",
    "projection_inputs",
    "projection_alignment_rows",
]

Table = dict[str, np.ndarray]


def centered_samples(hidden: jax.Array | np.ndarray) -> np.ndarray:
    """`(L + 1, B, T, E)` residual streams -> `(L + 1, B*T, E)` samples, centered per layer (float32)."""
    chex.assert_rank(hidden, 4)
    x = np.asarray(hidden, np.float32).reshape(hidden.shape[0], -1, hidden.shape[-1])
    return x - x.mean(axis=1, keepdims=True)


def hidden_state_rows(hidden: jax.Array | np.ndarray, key: jax.Array, *, num_draws: int = 16,
                      shuffle_draws: int = 0) -> Table:
    """Spectrum statistics of the centered residual stream of every layer, each with its null.

    Args:
      hidden: `(L + 1, B, T, E)` from `capture(...).hidden` (index 0: embeddings).
      key: PRNG key of the nulls.
      num_draws: Gaussian-null draws (>= 2); shuffle_draws: `esd`'s entry-shuffled baseline (0 skips).
    Returns:
      Columns `stream` (0 = embeddings, l + 1 = after layer l), `samples`, `hidden`, then every
      statistic of `analyses.rank` and `analyses.esd` with `_null_mean`, `_null_std`, `_z`, `_pct`.
    """
    x = centered_samples(hidden)
    matrices = {f"stream{i}": m for i, m in enumerate(x)}
    table = matrix_table(matrices, dict(zip(("rank", "esd"), jax.random.split(key))), num_draws=num_draws,
                         shuffle_draws=shuffle_draws)
    return {"stream": np.arange(x.shape[0]), "samples": table.pop("rows"), "hidden": table.pop("cols"),
            **{c: v for c, v in table.items() if c != "matrix"}}


@jit
def subspace_energy(deltas: jax.Array, basis: jax.Array) -> jax.Array:
    """Pooled energy fraction `||D P||_F^2 / ||D||_F^2` of activation differences in a subspace.

    deltas: `(..., N, E)`; basis: `(..., E, k)` orthonormal columns. Returns `(...)`; chance k/E.
    """
    return sp.projector_energy(deltas, basis)


@functools.partial(jit, static_argnames=("k", "num_draws"), work=lambda a: a["num_draws"] * a["deltas"].size)
def random_subspace_energy(key: jax.Array, deltas: jax.Array, k: int, num_draws: int) -> jax.Array:
    """`(num_draws,)` energy fractions of `deltas (N, E)` in uniformly random k-dim subspaces of R^E.

    A Haar-random subspace is the column space of an `(E, k)` Gaussian matrix; QR gives its basis.
    """
    chex.assert_rank(deltas, 2)
    E = deltas.shape[-1]
    deltas = jnp.asarray(deltas, jnp.float32)

    def one(k_draw):
        basis, _ = jnp.linalg.qr(jax.random.normal(k_draw, (E, k), jnp.float32))
        return sp.projector_energy(deltas, basis)

    return jax.lax.map(one, jax.random.split(key, num_draws))


def subspace_energy_rows(deltas: Mapping[str, np.ndarray], bases: Mapping[str, np.ndarray], key: jax.Array, *,
                         num_draws: int = 256) -> Table:
    """Energy fraction of every set of activation differences in every weight-derived subspace.

    Args:
      deltas: `{name: (N, E)}`, e.g. `{"cross_language": h_zh - h_en, "same_language": ...}`.
      bases: `{name: (E, k)}` orthonormal columns, e.g. top-k QK-kernel vectors of a head.
      key: PRNG key of the Monte Carlo null.
      num_draws: random subspaces per (deltas, k) pair (>= 2).
    Returns:
      One row per (deltas, basis): `deltas`, `basis`, `k`, `hidden`, `energy`, `chance` (= k/E,
      the exact null mean), `null_std` (exact), `z` (energy - chance) / null_std, and the Monte
      Carlo `mc_mean`, `mc_std`, `pct` (fraction of random subspaces with less energy).
    """
    if num_draws < 2:
        raise ValueError("num_draws must be >= 2")
    rows: dict[str, list] = {c: [] for c in ("deltas", "basis", "k", "hidden", "energy", "chance", "null_std", "z",
                                              "mc_mean", "mc_std", "pct")}
    for i, (dname, d) in enumerate(deltas.items()):
        d = np.asarray(d, np.float32)
        if d.ndim != 2:
            raise ValueError(f"deltas {dname!r} must be (N, E), got shape {d.shape}")
        mc_cache: dict[int, np.ndarray] = {}
        for bname, b in bases.items():
            b = np.asarray(b, np.float32)
            if b.ndim != 2 or b.shape[0] != d.shape[1]:
                raise ValueError(f"basis {bname!r} has shape {b.shape}; expected (E={d.shape[1]}, k)")
            k = int(b.shape[1])
            if k not in mc_cache:
                mc_cache[k] = np.asarray(random_subspace_energy(jax.random.fold_in(key, i * 100003 + k), d, k, num_draws))
            draws = mc_cache[k]
            energy = float(subspace_energy(d, b))
            exact = ffn_alignment_null(d, k)
            std = float(exact.std)
            for c, v in (("deltas", dname), ("basis", bname), ("k", k), ("hidden", d.shape[1]), ("energy", energy),
                         ("chance", float(exact.mean)), ("null_std", std),
                         ("z", (energy - float(exact.mean)) / std if std > 0 else np.nan),
                         ("mc_mean", float(draws.mean())), ("mc_std", float(draws.std(ddof=1))),
                         ("pct", float(np.mean(draws < energy)))):
                rows[c].append(v)
    return {c: np.asarray(v) for c, v in rows.items()}


def projection_inputs(acts, grads, attn_norm_inputs: np.ndarray, params_layer: Mapping[str, Any], layer: int,
                      name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(h_a (N, E), h_b (N, heads*D), g_b (N, heads*D), W (heads*D, E))` of one layer's q/k/v projection.

    acts, grads: `Activations` from `activation_grads(..., projections=True)`; attn_norm_inputs:
    `(B, T, E)` the normed residual stream entering layer `layer`'s attention; params_layer: that
    layer's canonical `attn` dict (leaves `(heads, D, E)`); name: "q", "k" or "v".
    """
    w = np.asarray(params_layer[name], np.float32)
    heads, D, E = w.shape
    h_a = np.asarray(attn_norm_inputs, np.float32).reshape(-1, E)
    h_b = np.asarray(acts.projections[name][layer], np.float32).reshape(-1, heads * D)
    g_b = np.asarray(grads.projections[name][layer], np.float32).reshape(-1, heads * D)
    return h_a, h_b, g_b, w.reshape(heads * D, E)


def projection_alignment_rows(inputs: Mapping[tuple[int, str], tuple[np.ndarray, ...]], key: jax.Array, *,
                              k: int | None = 16, num_draws: int = 32) -> Table:
    """H/G/Z alignments of layer projections against the random-basis null.

    Args:
      inputs: `{(layer, "q"/"k"/"v"): (h_a, h_b, g_b, W)}` as from `projection_inputs`.
      key: PRNG key of the null; k: leading eigenvalues used by the power-law fits.
    Returns:
      One row per (layer, projection): `layer`, `projection`, then every column of
      `spectral.alignment.alignment_table` (statistic, `_null_mean`, `_null_std`, `_z`, `_pct`).
      Note the input-side g_a is `g_b W` (the gradient reaching h_a through this projection only).
    """
    rows: dict[str, list] = {"layer": [], "projection": []}
    for i, ((layer, name), (h_a, h_b, g_b, w)) in enumerate(sorted(inputs.items())):
        m = al.layer_matrices(jnp.asarray(h_a), jnp.asarray(g_b), jnp.asarray(w), h_b=jnp.asarray(h_b))
        cols = al.alignment_table(jax.random.fold_in(key, i), m, k, num_draws=num_draws)
        rows["layer"].append(layer)
        rows["projection"].append(name)
        for c, v in cols.items():
            rows.setdefault(c, []).append(float(np.asarray(v)))
    return {c: np.asarray(v) for c, v in rows.items()}
