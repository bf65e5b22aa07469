"""Scan and Snap (Tian et al., NeurIPS 2023): data, the 1-layer (Y, Z) model, and its training loop.

The setup of docs/dynamics.md, Setups. Each "fact" f pairs a last (query) token m_f with a next token n_f; the
127 contextual tokens of a sequence are drawn i.i.d. from P(l | n_f): 10 common tokens (weight 1,
shared by every fact) and 10 distinct tokens of n_f (weights linspace(0.1, 1)), normalized. Token
indices are laid out as

    [ common (10) | distinct of fact 0 (10) | distinct of fact 1 | ... | last tokens | next tokens ]

so `M = 10 + 10 * num_next + num_last + num_next`, with `num_next = num_last * next_per_last`
(fact f = (last f // next_per_last, next f)).

Model, with one-hot tokens and no positional encoding:
attention a_t = softmax_t(Z[m, x_t]) over the contextual positions, histogram h = sum_t a_t e_{x_t},
normalized h / ||h||_2, logits = Y (h / ||h||), cross-entropy against n. Only token counts matter:
with c_l = #{t : x_t = l}, h_l = c_l exp(Z[m, l]) / sum_l' c_l' exp(Z[m, l']), and the L2
normalization cancels the softmax denominator, so the forward here works on counts and is exact
(`apply` equals `apply_sequence`, the position-by-position version, to rounding).

Training: SGD with momentum 0.9 on each matrix with its own learning rate (lr_Y = lr_Z * ratio), as
the reference's two torch optimizers; `momentum=0` is plain SGD. Every step records the batch loss
and the Z quantities the theory talks about (common-token logits, distinct-token logits per rank of
P(l|n), the entropy of c_n(l) ∝ P(l|n) exp(Z[m, l]) over the distinct tokens of n).

A sweep runs as one compiled call (`run_grid`) made of one vmapped group per task size: the
configurations that share a task (same number of last tokens, so same M) are vmapped together over
(learning rates x seeds) at their own size, and every group is traced into the same XLA program.
Padding every task to the largest M instead would make the (B, M) x (M, M) products of the small
tasks as costly as the largest (2.9x the work over the Fig. 6 grid; 115 s against 35 s for the
grouped call on a 2-core CPU), so there is no padding anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectrax.dynamics.loop import run_steps

__all__ = [
    "Batch",
    "GridStep",
    "Hyper",
    "Params",
    "Record",
    "State",
    "Step",
    "Task",
    "apply",
    "apply_sequence",
    "attention_distribution",
    "distinct_entropy",
    "hyper",
    "init_params",
    "init_state",
    "loss_fn",
    "make_step",
    "make_task",
    "num_tokens",
    "optimizers",
    "run",
    "run_grid",
    "sample_batch",
    "stack",
    "summarize",
    "summarize_grid",
    "train",
    "z_metrics",
]

NUM_COMMON = 10
NUM_DISTINCT = 10


class Task(NamedTuple):
    """One data distribution, as arrays. F = facts, M = tokens, C = common tokens, D = distinct
    tokens per next token, S = C + D. `M = probs.shape[1]`."""

    last: jax.Array  # (F,) int32: query token m_f of fact f
    next: jax.Array  # (F,) int32: next token n_f (the label)
    probs: jax.Array  # (F, M) float32: P(l | n_f); zero off the fact's support
    support: jax.Array  # (F, S) int32: the tokens with P(l | n_f) > 0
    support_cdf: jax.Array  # (F, S) float32: cumulative P over the support; last entry exactly 1
    common: jax.Array  # (C,) int32: common token ids
    distinct: jax.Array  # (F, D) int32: distinct token ids of n_f, by increasing P(l | n_f)


class Params(NamedTuple):
    """y: `(M, M)` decoder, rows = output token, columns = histogram token.
    z: `(M, M)` attention logits, rows = query (last) token, columns = key (contextual) token."""

    y: jax.Array
    z: jax.Array


class Batch(NamedTuple):
    """B sequences in count form: query `(B,)` int32, target `(B,)` int32, counts `(B, M)` float32
    (occurrences of each token among the contextual positions; rows sum to seq_len - 1)."""

    query: jax.Array
    target: jax.Array
    counts: jax.Array


class Hyper(NamedTuple):
    """Learning rates and momentum as float32 arrays (scalars, or stacked along a config axis)."""

    lr_z: jax.Array
    lr_y: jax.Array
    momentum: jax.Array


class Record(NamedTuple):
    """Per-step record, taken before step t's update (t = 0 is the initialization).

    loss `(T,)` batch cross-entropy; z_common `(T,)` mean of Z[m_f, l] over common l and real facts;
    z_distinct `(T, D)` mean over real facts of Z[m_f, distinct_f[r]], r = rank by P(l|n_f)
    ascending; entropy `(T,)` mean over real facts of the entropy of c_n (`distinct_entropy`);
    z_rows `(T, F, M)` = Z[m_f, :] per fact, only with `record_rows=True` (else None)."""

    loss: jax.Array
    z_common: jax.Array
    z_distinct: jax.Array
    entropy: jax.Array
    z_rows: jax.Array | None = None


# ----------------------------------------------------------------------------- data


def num_tokens(num_last: int, next_per_last: int, num_common: int = NUM_COMMON,
               num_distinct: int = NUM_DISTINCT) -> int:
    """M = common + distinct * next + last + next."""
    num_next = num_last * next_per_last
    return num_common + num_distinct * num_next + num_last + num_next


def make_task(num_last: int, next_per_last: int, *, num_common: int = NUM_COMMON,
              num_distinct: int = NUM_DISTINCT, common_weight: float = 1.0,
              distinct_weights: tuple[float, float] = (0.1, 1.0)) -> Task:
    """The facts and P(l | n) of docs/dynamics.md, Setups."""
    if num_last < 1 or next_per_last < 1 or num_common < 0 or num_distinct < 1:
        raise ValueError("need num_last >= 1, next_per_last >= 1, num_common >= 0, num_distinct >= 1")
    num_next = num_last * next_per_last
    m = num_tokens(num_last, next_per_last, num_common, num_distinct)
    last_offset = num_common + num_distinct * num_next
    next_offset = last_offset + num_last
    weights = np.concatenate([np.full(num_common, common_weight),
                              np.linspace(*distinct_weights, num_distinct)])
    facts = np.arange(num_next)
    distinct = num_common + num_distinct * facts[:, None] + np.arange(num_distinct)  # (F, D)
    support = np.concatenate([np.broadcast_to(np.arange(num_common), (num_next, num_common)), distinct], axis=1)
    probs = np.zeros((num_next, m))
    np.put_along_axis(probs, support, weights / weights.sum(), axis=1)
    # Inverse-CDF sampling needs the last cdf entry to be 1 exactly, or a uniform draw just below 1
    # would land on no token after float32 rounding.
    cdf = np.cumsum(np.broadcast_to(weights / weights.sum(), support.shape), axis=1)
    cdf[:, -1] = 1.0
    return Task(
        last=jnp.asarray(last_offset + facts // next_per_last, jnp.int32),
        next=jnp.asarray(next_offset + facts, jnp.int32), probs=jnp.asarray(probs, jnp.float32),
        support=jnp.asarray(support, jnp.int32), support_cdf=jnp.asarray(cdf, jnp.float32),
        common=jnp.arange(num_common, dtype=jnp.int32), distinct=jnp.asarray(distinct, jnp.int32))


def stack(trees: Sequence) -> object:
    """Stack pytrees of equal structure and shapes along a new leading (configuration) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def sample_batch(key: jax.Array, task: Task, *, batch_size: int = 128, seq_len: int = 128) -> Batch:
    """B sequences: a real fact uniformly per sequence, seq_len - 1 contextual tokens i.i.d. from
    P(l | n), returned as counts `(B, M)`."""
    k_fact, k_tok = jax.random.split(key)
    num_facts = task.last.shape[0]
    # The fact as floor(u F) of one uniform, not randint: the draw earlier versions made, so their
    # runs reproduce.
    fact = jnp.floor(jax.random.uniform(k_fact, (batch_size,), jnp.float32) * num_facts)
    fact = jnp.minimum(fact.astype(jnp.int32), num_facts - 1)
    u = jax.random.uniform(k_tok, (batch_size, seq_len - 1), task.support_cdf.dtype)
    # Count in support space (S entries, not M): #{t: u_t < cdf_s} - #{t: u_t < cdf_(s-1)} is the
    # number of positions that drew support token s; one fused compare-and-sum over (B, T, S).
    below = jnp.sum(u[:, :, None] < task.support_cdf[fact][:, None, :], axis=1, dtype=jnp.int32)
    local = jnp.diff(below, axis=-1, prepend=0).astype(jnp.float32)
    rows = jnp.arange(batch_size)[:, None]
    counts = jnp.zeros((batch_size, task.probs.shape[1]), jnp.float32).at[rows, task.support[fact]].add(local)
    return Batch(query=task.last[fact], target=task.next[fact], counts=counts)


# ----------------------------------------------------------------------------- model


def init_params(key: jax.Array, task: Task, *, zero: bool = False) -> Params:
    """Zero init, or PyTorch `nn.Linear`'s default uniform(±1/√M) for both `(M, M)` matrices."""
    m = task.probs.shape[1]
    if zero:
        return Params(jnp.zeros((m, m), jnp.float32), jnp.zeros((m, m), jnp.float32))
    bound = 1.0 / float(np.sqrt(m))  # a Python float: weakly typed, keeps float32
    ky, kz = jax.random.split(key)
    y = jax.random.uniform(ky, (m, m), jnp.float32, minval=-1.0, maxval=1.0) * bound
    z = jax.random.uniform(kz, (m, m), jnp.float32, minval=-1.0, maxval=1.0) * bound
    return Params(y, z)


def _normalized_histogram(z: jax.Array, query: jax.Array, counts: jax.Array) -> jax.Array:
    """`(B, M)`: c ∘ exp(Z[m]) / ||c ∘ exp(Z[m])||_2, the L2-normalized attention histogram."""
    present = counts > 0
    zq = z[query]
    # Shift by the largest present logit (the normalization cancels any shift) and give absent
    # tokens that same value before exp, so neither exp nor its gradient can overflow there.
    top = jax.lax.stop_gradient(jnp.max(jnp.where(present, zq, -jnp.inf), axis=-1, keepdims=True))
    w = counts * jnp.exp(jnp.where(present, zq, top) - top)
    return w / jnp.linalg.norm(w, axis=-1, keepdims=True)


def apply(params: Params, batch: Batch) -> jax.Array:
    """Next-token logits `(B, M)` from counts (exact)."""
    return _normalized_histogram(params.z, batch.query, batch.counts) @ params.y.T


def apply_sequence(params: Params, tokens: jax.Array, query: jax.Array) -> jax.Array:
    """The same model position by position: tokens `(B, T)` int, query `(B,)` -> logits `(B, M)`.

    The reference form (softmax over positions, attention-weighted one-hot sum); a check of `apply`."""
    m = params.z.shape[0]
    attn = jax.nn.softmax(params.z[query[:, None], tokens], axis=-1)  # (B, T)
    hist = jnp.einsum("bt,btm->bm", attn, jax.nn.one_hot(tokens, m, dtype=attn.dtype))
    return (hist / jnp.linalg.norm(hist, axis=-1, keepdims=True)) @ params.y.T


def loss_fn(params: Params, batch: Batch) -> jax.Array:
    """Mean cross-entropy of the next token over the batch."""
    logits = apply(params, batch)
    target = jnp.take_along_axis(logits, batch.target[:, None], axis=-1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - target)


# ----------------------------------------------------------------------------- theory's quantities


def attention_distribution(z: jax.Array, task: Task) -> jax.Array:
    """`(F, D)`: c_n(l) ∝ P(l|n) exp(Z[m, l]) renormalized over the distinct tokens of n."""
    logits = jnp.take_along_axis(z[task.last], task.distinct, axis=1)
    p = jnp.take_along_axis(task.probs, task.distinct, axis=1)
    return jax.nn.softmax(logits + jnp.log(p), axis=-1)


def distinct_entropy(z: jax.Array, task: Task) -> jax.Array:
    """The Fig. 6 metric: entropy (nats) of c_n, averaged over the facts. Scalar."""
    c = attention_distribution(z, task)
    return jnp.mean(-jnp.sum(c * jnp.log(c), axis=-1))


def z_metrics(z: jax.Array, task: Task) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(common-token mean logit (), distinct logits by rank (D,), distinct entropy ()), over facts."""
    rows = z[task.last]  # (F, M)
    common = jnp.mean(rows[:, task.common])
    distinct = jnp.mean(jnp.take_along_axis(rows, task.distinct, axis=1), axis=0)
    return common, distinct, distinct_entropy(z, task)


# ----------------------------------------------------------------------------- training


def hyper(lr_z: float, ratio: float = 1.0, momentum: float = 0.9) -> Hyper:
    """lr_Z, lr_Y = lr_Z * ratio, momentum (0 = plain SGD) as float32 arrays."""
    return Hyper(*(jnp.asarray(v, jnp.float32) for v in (lr_z, lr_z * ratio, momentum)))


def optimizers(h: Hyper) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """One optax SGD-with-momentum per matrix, (for Y, for Z), as the reference's two torch
    optimizers. torch's momentum (buf = μ buf + g; p -= lr buf) is optax's `trace` then scale."""
    return optax.sgd(h.lr_y, momentum=h.momentum), optax.sgd(h.lr_z, momentum=h.momentum)


class State(NamedTuple):
    """One run's carry: `params`, the (Y, Z) optimizer states, and the run's constants, so that one
    compiled step serves every seed and learning rate: `task`, `hyper`, and `data_keys` `(T, 2)`
    uint32, the raw key of step t's batch (the split of the data key into T, as before resumability)."""

    params: Params
    opt_state: tuple
    task: Task
    hyper: Hyper
    data_keys: jax.Array


def _raw(key: jax.Array) -> jax.Array:
    return jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key


def init_state(params: Params, key: jax.Array, task: Task, h: Hyper, steps: int) -> State:
    """The state of a run of `steps` from `params`, with step t's batch drawn from `split(key, steps)[t]`."""
    chex.assert_rank([params.y, params.z], 2)
    chex.assert_equal_shape([params.y, params.z])
    chex.assert_shape(task.probs, (None, params.z.shape[0]))
    opt_y, opt_z = optimizers(h)
    return State(params, (opt_y.init(params.y), opt_z.init(params.z)), task, h, _raw(jax.random.split(key, steps)))


@dataclasses.dataclass(frozen=True)
class Step:
    """`step(state, t) -> (state, Record)` for `loop.run_steps`: one SGD step on step t's batch. Holds
    only static settings, so equal steps share one compiled program."""

    batch_size: int = 128
    seq_len: int = 128
    record_rows: bool = False

    def __call__(self, state: State, t: jax.Array) -> tuple[State, Record]:
        p, task = state.params, state.task
        opt_y, opt_z = optimizers(state.hyper)
        batch = sample_batch(state.data_keys[t], task, batch_size=self.batch_size, seq_len=self.seq_len)
        loss, g = jax.value_and_grad(loss_fn)(p, batch)
        common, distinct, entropy = z_metrics(p.z, task)
        sy, sz = state.opt_state
        uy, sy = opt_y.update(g.y, sy)
        uz, sz = opt_z.update(g.z, sz)
        rows = p.z[task.last] if self.record_rows else None
        return (state._replace(params=Params(p.y + uy, p.z + uz), opt_state=(sy, sz)),
                Record(loss, common, distinct, entropy, rows))


def make_step(*, batch_size: int = 128, seq_len: int = 128, record_rows: bool = False) -> Step:
    """The step of one run (batched runs: `GridStep`)."""
    return Step(batch_size, seq_len, record_rows)


# a grid group's state: every leaf per (configuration, seed) except the shared task
_GRID_AXES = State(0, 0, None, 0, 0)


@dataclasses.dataclass(frozen=True)
class GridStep:
    """`step(states, t)` over a tuple of group states, each with leading axes `(C_g, R)`; records
    come back with the same leading axes. All groups are traced into one program."""

    step: Step

    def __call__(self, states: tuple[State, ...], t: jax.Array) -> tuple[tuple[State, ...], tuple[Record, ...]]:
        seeds = jax.vmap(self.step, in_axes=(_GRID_AXES, None), out_axes=(_GRID_AXES, 0))
        grid = jax.vmap(seeds, in_axes=(_GRID_AXES, None), out_axes=(_GRID_AXES, 0))
        out = [grid(s, t) for s in states]
        return tuple(o[0] for o in out), tuple(o[1] for o in out)


def train(params: Params, key: jax.Array, task: Task, h: Hyper, *, steps: int, batch_size: int = 128,
          seq_len: int = 128, record_rows: bool = False, chunk: int = 1000, directory=None,
          settings=None) -> tuple[Params, Record]:
    """`steps` SGD steps from `params` on fresh batches drawn from `key`.

    Returns the final params and the per-step `Record` (leading axis `steps`, host arrays). With
    `directory`, `loop.run_steps` saves the run every `chunk` steps and a rerun resumes it."""
    state = init_state(params, key, task, h, steps)
    final, traj = run_steps(make_step(batch_size=batch_size, seq_len=seq_len, record_rows=record_rows), state,
                            steps, chunk=chunk, directory=directory, settings=settings)
    return final.params, traj


def _init_run(key, task, h, *, steps, zero_init):
    k_init, k_data = jax.random.split(key)
    return init_state(init_params(k_init, task, zero=zero_init), k_data, task, h, steps)


def run(key: jax.Array, task: Task, h: Hyper, *, steps: int, batch_size: int = 128, seq_len: int = 128,
        zero_init: bool = False, record_rows: bool = False, chunk: int = 1000, directory=None,
        settings=None) -> tuple[Params, Record]:
    """Initialize from `key` (split: init, data) and train: one seed of one configuration."""
    k_init, k_data = jax.random.split(key)
    return train(init_params(k_init, task, zero=zero_init), k_data, task, h, steps=steps, batch_size=batch_size,
                 seq_len=seq_len, record_rows=record_rows, chunk=chunk, directory=directory, settings=settings)


def run_grid(keys: Sequence[jax.Array], tasks: Sequence[Task], hypers: Sequence[Hyper], *, steps: int,
             batch_size: int = 128, seq_len: int = 128, zero_init: bool = False, record_rows: bool = False,
             chunk: int = 1000, directory=None, settings=None, progress: str | None = None,
             ) -> tuple[tuple[Params, Record], ...]:
    """A sweep in one compiled program, in groups of one task each (resumable like `train`).

    Group g: `tasks[g]` (one Task, its own M), `hypers[g]` stacked `(C_g,)` (`stack`), `keys[g]`
    `(C_g, R)` (configurations x seeds). Returns, per group, params and records with leading
    axes `(C_g, R)`; entry [c, r] of group g equals `run(keys[g][c, r], tasks[g], hypers[g][c])` to
    float rounding. Each group is vmapped at its own size and all groups are traced into one XLA
    program (one compile per grid layout), so no configuration pays for the size of another."""
    if not len(keys) == len(tasks) == len(hypers):
        raise ValueError(f"need one keys, task and hypers per group, got {len(keys)}, {len(tasks)}, {len(hypers)}")
    init = functools.partial(_init_run, steps=steps, zero_init=zero_init)
    # inner vmap: seeds (the task and learning rates shared); outer: the configurations of a group
    init = jax.vmap(jax.vmap(init, in_axes=(0, None, None), out_axes=_GRID_AXES), in_axes=(0, None, 0),
                    out_axes=_GRID_AXES)
    states = []
    for k, task, h in zip(keys, tasks, hypers):
        typed = jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
        chex.assert_rank(k, 2 if typed else 3)  # (C_g, R) typed keys, or (C_g, R, 2) raw uint32 keys
        chex.assert_shape([h.lr_z, h.lr_y, h.momentum], (k.shape[0],))
        states.append(init(k, task, h))
    step = GridStep(make_step(batch_size=batch_size, seq_len=seq_len, record_rows=record_rows))
    finals, trajs = run_steps(step, tuple(states), steps, chunk=chunk, directory=directory, settings=settings,
                              progress=progress)
    # the loop stacks time first: (T, C_g, R, ...) -> (C_g, R, T, ...)
    return tuple((f.params, jax.tree.map(lambda a: np.moveaxis(a, 0, 2), r)) for f, r in zip(finals, trajs))


# ----------------------------------------------------------------------------- verdicts


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D sequences (no ties expected)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def summarize(trajectory: Record, task: Task, params: Params) -> tuple[list[dict], dict[str, float]]:
    """The Fig. 4 verdicts of one run: per fact, the final Z row's common and distinct logits with
    P(l|n) and their rank correlation; and the checks (the zero-init loss against ln M, the largest
    final common-token logit (theory: < 0), the smallest rank correlation (theory: near 1), the
    entropy of c_n at the start and end (theory: it falls)). Host numpy."""
    loss, entropy = np.asarray(trajectory.loss), np.asarray(trajectory.entropy)
    z, common, m = np.asarray(params.z), np.asarray(task.common), int(task.probs.shape[1])
    facts = []
    for f in range(len(task.last)):
        distinct = np.asarray(task.distinct[f])
        row = z[int(task.last[f])]
        p = np.asarray(task.probs[f])[distinct]
        facts.append({"last_token": int(task.last[f]), "next_token": int(task.next[f]),
                      "common_logits": row[common].tolist(), "distinct_tokens": distinct.tolist(),
                      "distinct_probs": p.tolist(), "distinct_logits": row[distinct].tolist(),
                      "rank_correlation": _spearman(row[distinct], p)})
    checks = {"initial_loss": float(loss[0]), "ln_M": float(np.log(m)),
              "initial_loss_minus_ln_M": float(loss[0] - np.log(m)),
              "max_final_common_logit": float(max(max(f["common_logits"]) for f in facts)),
              "min_rank_correlation": float(min(f["rank_correlation"] for f in facts)),
              "entropy_initial": float(entropy[0]), "entropy_final": float(entropy[-1])}
    return facts, checks


def summarize_grid(configs: Sequence[tuple[int, float, float]], entropy: np.ndarray, grid: dict) -> dict:
    """The Fig. 6 verdict: for each (num_last, ratio) cell, is the seed-mean final entropy
    (`entropy` `(C, R)`, configs `(num_last, lr_z, ratio)`) decreasing in lr_Z? And the Spearman
    correlation between lr_Z and entropy over all cells (theory: negative)."""
    mean = np.asarray(entropy).mean(axis=1)
    index = {c: i for i, c in enumerate(configs)}
    cells, decreasing = 0, 0
    for n in grid["num_last"]:
        for ratio in grid["ratio"]:
            values = [mean[index[(n, lr, ratio)]] for lr in grid["lr_z"]]
            cells += 1
            decreasing += all(b < a for a, b in zip(values, values[1:]))
    lr = np.array([c[1] for c in configs])
    return {"cells": cells, "cells_decreasing_in_lr_z": decreasing,
            "spearman_lr_z_vs_entropy": _spearman(lr, mean)}
