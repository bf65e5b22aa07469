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

Findings (`experiments/representation_alignment.py`, defaults; details in its docstring): with
γ > 0 all six alignments of the 64 x 64 hidden layer end at 0.73-0.96 (random-basis null 0.05-0.07);
without weight decay the weight alignments (H-Z, G-Z) decay to ~0.27 while H-G stays at 0.73-0.82,
so the weight decay is what ties W to H and G; none reaches 1, and eq. 7's positive coefficients
do not show in a least-squares fit (the G coefficient comes out negative once Z is in the fit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectrax.spectral.alignment import LayerMatrices, layer_matrices

__all__ = [
    "Hyper",
    "Record",
    "Task",
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
