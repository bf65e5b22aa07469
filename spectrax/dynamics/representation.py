"""Representation alignment during SGD training: a tanh MLP student of a noisy teacher.

Source: the Ziyin talk (Ziyin et al., arXiv:2410.03006), docs/dynamics.md, Setups, "Canonical representation alignments";
the measurements are `spectrax.spectral.alignment`. For every linear layer h_b = W h_a of the
student the run records the six matrices H_a, G_a, Z_a (input side) and H_b, G_b, Z_b (output
side) on a fixed evaluation set at regular intervals, so their alignments, power laws and the
random-basis null can be computed along the trajectory.

The theory (002, Theorem 1). With per-sample loss l, SGD with weight decay γ,
Δθ = -η(∇l + γθ), moves h_b hᵀ_b by a drift (learning), a dissipation (-2ηγ h_b h_bᵀ) and a
fluctuation (η² ||h_a||⁴ g_b g_bᵀ). At stationarity they balance (a fluctuation-dissipation
relation), which gives W Wᵀ + c1 G_b = c2 H_b and Wᵀ W + c3 H_a = c4 G_a with c_i > 0, and at a
local minimum the canonical representation H ∝ G ∝ Z on both sides. The balance needs both the
noise (SGD on minibatches with label noise keeps g ≠ 0 at the end) and the regularization: with
γ = 0 there is no dissipation term and no stationary relation is predicted.

Setup. Inputs x ~ N(0, I_{d_in}); teacher y = V_2 tanh(V_1 x) + σ ε with a narrow hidden layer
(`teacher_width`, default 4), so a compact representation exists; student = tanh MLP without
biases (so h_b = W h_a exactly), weights `(d_out, d_in)` per layer from N(0, 1/d_in); per-sample
loss l = ½ ||f(x) - y||²; online SGD on fresh minibatches (optax `add_decayed_weights` then `sgd`,
i.e. exactly the update above); per-sample gradients g_b = dl/dh_b from one backward pass through
zero offsets added to every preactivation; g_a = g_b W (h_a feeds only W: no residuals).

A sweep (weight decays x seeds) is one vmapped program. `make_step` builds the step for
`spectrax.dynamics.loop.run_steps`: one step = `record_every` SGD steps of every configuration, then
one measurement, so a run of T steps of `run_steps` is T * record_every SGD steps and T records,
checkpointable and resumable. Seed r uses the same initialization and data stream at every
weight decay (a paired comparison).

Measured findings (which run, what held and what did not): docs/dynamics.md, "Findings by module", `representation`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectrax.dynamics.loop import run_steps
from spectrax.spectral import alignment as al
from spectrax.spectral.alignment import LayerMatrices, layer_matrices

__all__ = [
    "Alignments",
    "Config",
    "Hyper",
    "Record",
    "Sweep",
    "Task",
    "alignment_statistics",
    "apply",
    "init_mlp",
    "init_state",
    "layer_dims",
    "loss_fn",
    "make_step",
    "make_task",
    "measure",
    "neuron_gradients",
    "sample_batch",
    "simulate",
    "summarize",
    "sweep",
]

Params = tuple  # (W_1 (d_1, d_0), ..., W_L (d_L, d_{L-1})), float32


class Task(NamedTuple):
    """teacher: its weights (V_1 `(teacher_width, d_in)`, V_2 `(d_out, teacher_width)`);
    noise: label noise std σ `()`; eval_x `(N, d_in)`, eval_y `(N, d_out)`: the fixed set on which
    H and G are measured (labels drawn with the same noise as training)."""

    teacher: Params
    noise: jax.Array
    eval_x: jax.Array
    eval_y: jax.Array


class Hyper(NamedTuple):
    """Learning rate and weight decay γ, float32, `(C,)` over configurations."""

    lr: jax.Array
    weight_decay: jax.Array


class Record(NamedTuple):
    """One measurement per configuration, after the step's SGD steps; leading axis `(C,)`.

    loss: mean training minibatch loss over the step's SGD steps; eval_loss: loss on the eval set;
    layers: one `LayerMatrices` per student layer (layer l: `(C, d_{l}, d_{l})` on side a and
    `(C, d_{l+1}, d_{l+1})` on side b)."""

    loss: jax.Array
    eval_loss: jax.Array
    layers: tuple


def layer_dims(d_in: int, width: int, depth: int, d_out: int) -> tuple[int, ...]:
    """(d_in, width x depth hidden layers, d_out)."""
    if min(d_in, width, d_out) < 1 or depth < 1:
        raise ValueError(f"need positive sizes and depth >= 1, got {d_in}, {width}, {depth}, {d_out}")
    return (d_in, *([width] * depth), d_out)


def init_mlp(key: jax.Array, dims: Sequence[int], scale: float = 1.0) -> Params:
    """Weights W_l `(dims[l+1], dims[l])` ~ N(0, scale² / dims[l])."""
    keys = jax.random.split(key, len(dims) - 1)
    return tuple(jax.random.normal(k, (o, i), jnp.float32) * (scale / float(np.sqrt(i)))
                 for k, i, o in zip(keys, dims[:-1], dims[1:]))


def apply(params: Params, x: jax.Array, offsets: Sequence[jax.Array] | None = None) -> jax.Array:
    """Bias-free tanh MLP: x `(N, d_0)` -> outputs `(N, d_L)`; tanh after every layer but the last.

    offsets: optional per-sample additions to each preactivation `(N, d_l)` (zeros: the derivative
    with respect to them is the per-sample neuron gradient g_b)."""
    h = x
    for l, w in enumerate(params):
        h = h @ w.T
        if offsets is not None:
            h = h + offsets[l]
        if l < len(params) - 1:
            h = jnp.tanh(h)
    return h


def _per_sample_loss(out: jax.Array, y: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum((out - y) ** 2, axis=-1)


def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean over the batch of l = ½ ||f(x) - y||²."""
    return jnp.mean(_per_sample_loss(apply(params, x), y))


def make_task(key: jax.Array, d_in: int = 16, d_out: int = 8, *, teacher_width: int = 4, noise: float = 0.5,
              eval_size: int = 2048) -> Task:
    """A teacher tanh net with a narrow hidden layer and a fixed evaluation set drawn from it."""
    k_teacher, k_eval = jax.random.split(key)
    teacher = init_mlp(k_teacher, (d_in, teacher_width, d_out), scale=2.0)
    task = Task(teacher, jnp.asarray(noise, jnp.float32), jnp.zeros((0, d_in), jnp.float32),
                jnp.zeros((0, d_out), jnp.float32))
    x, y = sample_batch(k_eval, task, eval_size)
    return task._replace(eval_x=x, eval_y=y)


def sample_batch(key: jax.Array, task: Task, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """x `(B, d_in)` ~ N(0, I), y `(B, d_out)` = teacher(x) + σ N(0, I)."""
    kx, ke = jax.random.split(key)
    d_in, d_out = task.teacher[0].shape[1], task.teacher[-1].shape[0]
    x = jax.random.normal(kx, (batch_size, d_in), jnp.float32)
    y = apply(task.teacher, x) + task.noise * jax.random.normal(ke, (batch_size, d_out), jnp.float32)
    return x, y


def neuron_gradients(params: Params, x: jax.Array, y: jax.Array) -> tuple[list, list]:
    """Per layer, (h_a `(N, d_l)`, g_b `(N, d_{l+1})` = dl_i/dh_b for each sample i)."""
    chex.assert_rank(x, 2)
    chex.assert_axis_dimension(x, 1, params[0].shape[1])
    zeros = [jnp.zeros((x.shape[0], w.shape[0]), x.dtype) for w in params]
    # One backward pass: the per-sample losses are summed, and sample i's loss depends only on its
    # own offsets, so the gradient's row i is sample i's own dl/dh_b.
    g_b = jax.grad(lambda off: jnp.sum(_per_sample_loss(apply(params, x, off), y)))(zeros)
    h_a, h = [], x
    for l, w in enumerate(params):
        h_a.append(h)
        h = jnp.tanh(h @ w.T) if l < len(params) - 1 else h
    return h_a, list(g_b)


def measure(params: Params, x: jax.Array, y: jax.Array) -> tuple[LayerMatrices, ...]:
    """The six matrices of every layer on the samples (x `(N, d_in)`, y `(N, d_out)`)."""
    h_a, g_b = neuron_gradients(params, x, y)
    return tuple(layer_matrices(a, g, w) for a, g, w in zip(h_a, g_b, params))


def _optimizer(lr: jax.Array, weight_decay: jax.Array) -> optax.GradientTransformation:
    # decay before the learning rate: Δθ = -η(∇l + γθ), the update 002's theory is written for
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr))


def init_state(key: jax.Array, dims: Sequence[int], num_configs: int, seeds: int) -> Params:
    """Stacked student weights `(C, ...)` for C = num_configs x seeds configurations (config-major):
    seed r's initialization is shared by every configuration."""
    per_seed = [init_mlp(jax.random.fold_in(key, r), dims) for r in range(seeds)]
    return tuple(jnp.stack([per_seed[r][l] for _ in range(num_configs) for r in range(seeds)])
                 for l in range(len(dims) - 1))


def make_step(task: Task, hyper: Hyper, key: jax.Array, seeds: int, *, record_every: int, batch_size: int):
    """`step(params (C, ...), t) -> (params, Record)` for `run_steps`: `record_every` SGD steps of
    every configuration on fresh minibatches, then a measurement on the eval set.

    hyper: `(C,)` with C = configs x seeds, config-major (as `sweep` builds it); configuration c
    draws its data from `fold_in(fold_in(key, c % seeds), sgd step)`, the same stream for one seed
    at every weight decay. The optimizer is stateless plain SGD, so the weights are the whole state.
    """
    num = hyper.lr.shape[0]
    chex.assert_shape([hyper.lr, hyper.weight_decay], (num,))
    if num % seeds:
        raise ValueError(f"{num} configurations are not a multiple of {seeds} seeds")
    seed_of = jnp.arange(num, dtype=jnp.int32) % seeds

    def one(params, lr, wd, seed, t):
        opt = _optimizer(lr, wd)
        data_key = jax.random.fold_in(key, seed)

        def sgd(p, i):
            x, y = sample_batch(jax.random.fold_in(data_key, t * record_every + i), task, batch_size)
            loss, g = jax.value_and_grad(loss_fn)(p, x, y)
            updates, _ = opt.update(g, opt.init(p), p)
            return optax.apply_updates(p, updates), loss

        params, losses = jax.lax.scan(sgd, params, jnp.arange(record_every, dtype=jnp.int32))
        mats = measure(params, task.eval_x, task.eval_y)
        return params, Record(jnp.mean(losses), loss_fn(params, task.eval_x, task.eval_y), mats)

    def step(params, t):
        return jax.vmap(one, in_axes=(0, 0, 0, 0, None))(params, hyper.lr, hyper.weight_decay, seed_of, t)

    return step


def sweep(weight_decays: Sequence[float], seeds: int, lr: float) -> Hyper:
    """Hyper `(len(weight_decays) * seeds,)`, config-major: entry c is weight decay c // seeds."""
    wd = np.repeat(np.asarray(weight_decays, np.float32), seeds)
    return Hyper(jnp.full(wd.shape, lr, jnp.float32), jnp.asarray(wd))


# ----------------------------------------------------------------------------- the sweep and its verdicts


@dataclasses.dataclass(frozen=True)
class Config:
    """`experiments/representation_alignment.py`: a tanh MLP d_in -> width (x depth) -> d_out learns
    a teacher of `teacher_width` hidden units with label noise `noise` by online SGD (lr, batch_size)
    at each of `weight_decays` x `seeds`, `steps` SGD steps measured every `record_every` on
    `eval_size` samples (`chunk` records per compiled chunk and checkpoint); random-basis nulls of
    `null_draws` draws at every `null_every`-th record; `top_k` leading eigenvalues in the power-law
    fits; `layer`: the headline layer (-1: the middle one); PRNG `seed`."""

    steps: int = 40000
    record_every: int = 1000
    weight_decays: tuple[float, ...] = (0.0, 1e-3, 3e-3, 1e-2)
    seeds: int = 3
    lr: float = 0.05
    batch_size: int = 16
    d_in: int = 16
    width: int = 64
    depth: int = 2
    d_out: int = 8
    teacher_width: int = 4
    noise: float = 0.5
    eval_size: int = 2048
    null_draws: int = 16
    null_every: int = 4
    layer: int = -1
    top_k: int = 8
    chunk: int = 10
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "weight_decays", tuple(float(w) for w in self.weight_decays))
        if self.record_every < 1 or self.steps < self.record_every or self.steps % self.record_every:
            raise ValueError(f"steps ({self.steps}) must be a positive multiple of record_every ({self.record_every})")
        if self.seeds < 1 or self.null_draws < 2 or self.null_every < 1 or not self.weight_decays:
            raise ValueError("need seeds >= 1, null_draws >= 2, null_every >= 1 and a weight decay")
        if any(w < 0 for w in self.weight_decays):
            raise ValueError("weight decays must be >= 0")
        if not -1 <= self.layer < len(self.dims) - 1:
            raise ValueError(f"layer must be in [0, {len(self.dims) - 2}] (or -1: the middle one)")

    @property
    def dims(self) -> tuple[int, ...]:
        return layer_dims(self.d_in, self.width, self.depth, self.d_out)

    @property
    def headline_layer(self) -> int:
        return len(self.dims) // 2 - 1 if self.layer == -1 else self.layer

    def settings(self) -> dict[str, Any]:
        """What a checkpoint of the training must agree on."""
        return {"steps": self.steps, "record_every": self.record_every, "weight_decays": list(self.weight_decays),
                "seeds": self.seeds, "lr": self.lr, "batch_size": self.batch_size, "dims": list(self.dims),
                "teacher_width": self.teacher_width, "noise": self.noise, "eval_size": self.eval_size,
                "seed": self.seed}


class Sweep(NamedTuple):
    """A trained sweep, host arrays, records r = 0 (init), 1..R (after r * record_every SGD steps),
    configurations C config-major: layers, per layer, the six matrices `(R + 1, C, ...)`;
    eval_loss `(R + 1, C)`; train_loss `(R + 1, C)` (NaN at r = 0); init_loss `(C,)`."""

    layers: list[LayerMatrices]
    eval_loss: np.ndarray
    train_loss: np.ndarray
    init_loss: np.ndarray


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def simulate(config: Config, *, directory=None, progress: str | None = None) -> Sweep:
    """Train the sweep (resumable in `directory`) and measure every layer at every record."""
    key = jax.random.key(config.seed)
    task = make_task(jax.random.fold_in(key, 0), config.d_in, config.d_out, teacher_width=config.teacher_width,
                     noise=config.noise, eval_size=config.eval_size)
    hyper = sweep(config.weight_decays, config.seeds, config.lr)
    state = init_state(jax.random.fold_in(key, 1), config.dims, len(config.weight_decays), config.seeds)
    step = make_step(task, hyper, jax.random.fold_in(key, 2), config.seeds, record_every=config.record_every,
                     batch_size=config.batch_size)
    init = _np(jax.vmap(measure, in_axes=(0, None, None))(state, task.eval_x, task.eval_y))
    init_loss = np.asarray(jax.vmap(loss_fn, in_axes=(0, None, None))(state, task.eval_x, task.eval_y))
    _, traj = run_steps(step, state, config.steps // config.record_every, chunk=config.chunk, directory=directory,
                        settings=config.settings(), progress=progress)
    layers = [LayerMatrices(*[np.concatenate([i[None], t]) for i, t in zip(a, b)]) for a, b in zip(init, traj.layers)]
    return Sweep(layers, np.concatenate([init_loss[None], traj.eval_loss]),
                 np.concatenate([np.full((1, len(init_loss)), np.nan, np.float32), traj.loss]), init_loss)


class Alignments(NamedTuple):
    """Per layer: align, null_mean, null_std: per alignment name `(R + 1, C)` (the null NaN off
    `null_records`); finals: the last record's `alignment_table` (per statistic `(C,)`)."""

    align: list[dict[str, np.ndarray]]
    null_mean: list[dict[str, np.ndarray]]
    null_std: list[dict[str, np.ndarray]]
    null_records: np.ndarray
    finals: list[dict[str, np.ndarray]]


def alignment_statistics(result: Sweep, config: Config) -> Alignments:
    """The six alignments of every layer at every record, their random-basis null at every
    `null_every`-th record and the last, and the last record's full `alignment_table`."""
    num_rec, num_cfg = result.eval_loss.shape
    null_rec = np.unique(np.r_[np.arange(0, num_rec, config.null_every), num_rec - 1])
    nk = jax.random.fold_in(jax.random.key(config.seed), 3)
    align, null_mean, null_std, finals = [], [], [], []
    for li, lm in enumerate(result.layers):
        align.append(_np(al.six_alignments(LayerMatrices(*map(jnp.asarray, lm)))))
        sub = LayerMatrices(*[jnp.asarray(np.asarray(x)[null_rec].reshape((-1,) + x.shape[2:])) for x in lm])
        null = al.random_basis_null(jax.random.fold_in(nk, li), sub, al.six_alignments, num_draws=config.null_draws)
        mean = {n: np.full((num_rec, num_cfg), np.nan, np.float32) for n in al.ALIGNMENTS}
        std = {n: np.full((num_rec, num_cfg), np.nan, np.float32) for n in al.ALIGNMENTS}
        for n in al.ALIGNMENTS:
            mean[n][null_rec] = np.asarray(null.mean[n]).reshape(len(null_rec), num_cfg)
            std[n][null_rec] = np.asarray(null.std[n]).reshape(len(null_rec), num_cfg)
        null_mean.append(mean)
        null_std.append(std)
        final = LayerMatrices(*[jnp.asarray(x[-1]) for x in lm])
        k = min(config.top_k, final.h_a.shape[-1], final.h_b.shape[-1])
        finals.append(_np(al.alignment_table(jax.random.fold_in(nk, 100 + li), final, k, num_draws=config.null_draws)))
    return Alignments(align, null_mean, null_std, null_rec, finals)


def summarize(stats: Alignments, result: Sweep, config: Config) -> dict[str, Any]:
    """The headline layer against the theory: per weight decay, the losses and each alignment at
    init and end with its null and z-score, the eq. 7 fits and power laws (`headline_layer`); and
    the checks (`checks`): all six above the null at the largest γ, eq. 7's coefficients positive,
    which alignments weight decay raises over γ = 0."""
    layer, seeds, wds = config.headline_layer, config.seeds, config.weight_decays
    align, mean, std, final = (stats.align[layer], stats.null_mean[layer], stats.null_std[layer],
                               stats.finals[layer])
    summary = {}
    for i, w in enumerate(wds):
        cfg = slice(i * seeds, (i + 1) * seeds)
        entry = {"eval_loss_init": float(np.mean(result.init_loss[cfg])),
                 "eval_loss_final": float(np.mean(result.eval_loss[-1, cfg]))}
        for n in al.ALIGNMENTS:
            entry[n] = {"init": float(np.mean(align[n][0, cfg])), "final": float(np.mean(align[n][-1, cfg])),
                        "final_seed_std": float(np.std(align[n][-1, cfg])),
                        "null_mean_final": float(np.mean(mean[n][-1, cfg])),
                        "null_std_final": float(np.mean(std[n][-1, cfg])),
                        "z_final": float(np.mean((align[n][-1, cfg] - mean[n][-1, cfg]) / std[n][-1, cfg])),
                        "z_init": float(np.mean((align[n][0, cfg] - mean[n][0, cfg]) / std[n][0, cfg]))}
        for name in ("fdt_b_z", "fdt_b_g", "fdt_b_r2", "fdt_a_z", "fdt_a_h", "fdt_a_r2", "rank_alpha_hg_b",
                     "rank_alpha_r2_hg_b", "alpha_hg_b", "alpha_r2_hg_b", "alpha_r2_hg_b_null_mean"):
            entry[name] = float(np.nanmean(np.asarray(final[name])[cfg]))
        summary[f"wd={w:g}"] = entry
    decayed = [f"wd={w:g}" for w in wds if w > 0]
    zero = [f"wd={w:g}" for w in wds if w == 0]
    checks: dict[str, Any] = {}
    if decayed:
        best = decayed[-1]
        checks["largest_wd"] = best
        checks["min_final_alignment_largest_wd"] = min(summary[best][n]["final"] for n in al.ALIGNMENTS)
        checks["min_final_z_largest_wd"] = min(summary[best][n]["z_final"] for n in al.ALIGNMENTS)
        checks["all_six_above_null_z3_largest_wd"] = checks["min_final_z_largest_wd"] > 3
        checks["fdt_coefficients_positive_largest_wd"] = all(summary[best][c] > 0 for c in
                                                              ("fdt_b_z", "fdt_b_g", "fdt_a_z", "fdt_a_h"))
        checks["rank_alpha_hg_b_largest_wd"] = summary[best]["rank_alpha_hg_b"]
    if zero and decayed:
        z0 = zero[0]
        checks["min_final_alignment_wd0"] = min(summary[z0][n]["final"] for n in al.ALIGNMENTS)
        checks["mean_final_alignment_gain_largest_wd_over_wd0"] = float(np.mean(
            [summary[decayed[-1]][n]["final"] - summary[z0][n]["final"] for n in al.ALIGNMENTS]))
        checks["alignments_higher_with_wd"] = [n for n in al.ALIGNMENTS
                                               if summary[decayed[-1]][n]["final"] > summary[z0][n]["final"]]
    return {"headline_layer": summary, "checks": checks}
