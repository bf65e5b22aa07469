"""JoMA (Tian et al., ICLR 2024): the attention + linear-layer toy, its invariants, and the entropy toy.

Toy of docs/dynamics.md, Setups. M_c = 10 distinct + 10 common contextual tokens and one query token, K = 20
classes, embeddings U `(d, M_c + 1)` = the first M_c + 1 standard basis vectors of R^d (d = 30).
X `(M_c, K)`: column k is the contextual-token distribution of class k (U(0, 1/2) entries; in the
"Gaussian" variant the distinct rows are X[l, k] = exp(-(l - k * 10 / K)^2 / 30)), columns
normalized to sum 1. Attention over contextual tokens with logits z `(M_c,)` and temperature T:

    softmax: B[l, k] = exp(z_l / T) X[l, k] / sum_l' exp(z_l' / T) X[l', k]
    exp:     B[l, k] = exp(z_l / T) X[l, k]
    linear:  B[l, k] = z_l X[l, k]

F = U_C B + u_query (residual), outputs F^T W `(K, K)`, cross-entropy with one sample per class
(full batch), plain SGD on (W `(d, K)`, z) from N(0, 1) / 100.

The theorem: with V = U_C^T W `(M_c, K)`, gradient flow keeps an invariant per contextual token:

    linear:  z_l^2           = sum_k V_lk^2 + C_l
    exp:     z_l             = (1 / 2T) sum_k V_lk^2 + C_l
    softmax: z_l            ~= (1 / 2T) [sum_k V_lk^2 - xbar_l ||W||_F^2] + C_l

(the softmax form assumes the attention's class average b̄_l = mean_k B[l, k] stays at its start
xbar_l = mean_k X[l, k]; the documented setup uses ||W||_F^2, as the reference code does). C is fixed at t = 0.
`train` records the real logits, the predicted ones and their normalized correlation
NC(a, b) = cos(a - mean a, b - mean b) over the M_c tokens at every step, for the invariant's own
quantity (z, or z^2 for linear attention). NC is 1 at t = 0 by construction of C.

SGD's finite step, exactly. With g_z = dL/dz and g_V = U_C^T dL/dW (so V <- V - lr g_V), the
first-order parts of the step cancel in the invariant and what is left is, per step and token,

    linear:  d(z_l^2 - sum_k V_lk^2)  = lr^2 (g_z,l^2 - ||g_V,l||^2)
    exp:     d(z_l - sum_k V_lk^2/2T) = -lr^2 ||g_V,l||^2 / 2T
    softmax: d(z_l - [sum_k V_lk^2 - xbar_l ||W||_F^2]/2T)
                                      = -lr^2 (||g_V,l||^2 - xbar_l ||g_W||_F^2) / 2T
                                        + (first order: the part the theorem approximates)

`train` accumulates this as `step_term`: the exp and linear invariants then hold to rounding under
SGD (prediction + step_term = quantity), and for softmax what remains is the theory's
approximation alone.

Measured findings (which run, what held and what did not): docs/dynamics.md, "Findings by module", `joma`.

The entropy toy (the talk's nonlinear-JoMA picture): v <- v + lr (mu - v) ∘ softmax(v^2 / T) from a
small v; the entropy of softmax(v^2 / T) first falls (the most salient component grows first),
then rises (the others catch up).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectrax.dynamics.loop import run_steps

__all__ = [
    "JUDGE_FROM",
    "KINDS",
    "EntropyState",
    "Params",
    "Record",
    "State",
    "Step",
    "Task",
    "attention",
    "entropy_step",
    "entropy_toy",
    "entropy_toy_target",
    "init_params",
    "init_state",
    "invariant_prediction",
    "invariant_quantity",
    "loss_fn",
    "make_step",
    "make_task",
    "normalized_correlation",
    "outputs",
    "summarize",
    "summarize_seeds",
    "train",
]

KINDS = ("softmax", "exp", "linear")


class Task(NamedTuple):
    """x `(M_c, K)` class-conditional token distributions (columns sum to 1); u `(d, M_c + 1)`
    embeddings (contextual tokens first, the query last); xbar `(M_c,)` = mean_k x[l, k]."""

    x: jax.Array
    u: jax.Array
    xbar: jax.Array


class Params(NamedTuple):
    """w `(d, K)` output layer; z `(M_c,)` attention logits of the contextual tokens."""

    w: jax.Array
    z: jax.Array


class Record(NamedTuple):
    """Per step t (before its update; T = steps): loss `(T,)`; z `(T, M_c)` real logits; z_hat
    `(T, M_c)` logits the invariant predicts (linear: sign(z) sqrt(max(prediction, 0))); nc `(T,)`
    NC of the invariant quantity vs its prediction; nc_v, nc_norm `(T,)` NC against the prediction's
    two parts alone (the sum_k V^2 term, the -xbar ||W||^2 term; softmax only, else nan);
    v `(T, M_c, K)` = U_C^T W; step_term `(T, M_c)` the accumulated O(lr^2) part of SGD's steps
    (module docstring), so prediction + step_term = quantity exactly for exp and linear attention;
    nc_stepped `(T,)` NC of the quantity vs prediction + step_term; attn_mean `(T, M_c)` the class
    average of the attention, b̄_l = mean_k B[l, k] (the softmax theorem assumes it constant)."""

    loss: jax.Array
    z: jax.Array
    z_hat: jax.Array
    nc: jax.Array
    nc_v: jax.Array
    nc_norm: jax.Array
    v: jax.Array
    step_term: jax.Array
    nc_stepped: jax.Array
    attn_mean: jax.Array


def make_task(key: jax.Array, *, num_distinct: int = 10, num_common: int = 10, num_classes: int = 20,
              dim: int = 30, gaussian: bool = True) -> Task:
    """X from U(0, 1/2) (Gaussian bumps on the distinct rows if `gaussian`), columns normalized."""
    mc = num_distinct + num_common
    if dim < mc + 1:
        raise ValueError(f"embedding dim {dim} < {mc + 1} tokens: the basis embedding needs dim >= M_c + 1")
    x = jax.random.uniform(key, (mc, num_classes), jnp.float32, maxval=0.5)
    if gaussian:
        l = jnp.arange(num_distinct, dtype=jnp.float32)[:, None]
        k = jnp.arange(num_classes, dtype=jnp.float32)[None, :]
        x = x.at[:num_distinct].set(jnp.exp(-((l - k * num_distinct / num_classes) ** 2) / 30.0))
    x = x / jnp.sum(x, axis=0, keepdims=True)
    return Task(x=x, u=jnp.eye(dim, mc + 1, dtype=jnp.float32), xbar=jnp.mean(x, axis=1))


def init_params(key: jax.Array, task: Task, *, scale: float = 0.01) -> Params:
    """W and z from N(0, 1) * scale (the reference's randn / 100)."""
    kw, kz = jax.random.split(key)
    d, mc, k = task.u.shape[0], task.x.shape[0], task.x.shape[1]
    return Params(jax.random.normal(kw, (d, k), jnp.float32) * scale,
                      jax.random.normal(kz, (mc,), jnp.float32) * scale)


def attention(z: jax.Array, x: jax.Array, kind: str, temperature: float) -> jax.Array:
    """B `(M_c, K)`: the attention weights each class's query puts on each contextual token."""
    if kind == "softmax":
        # exp(z/T) x normalized over tokens == softmax(z/T + log x): stable for large z.
        return jax.nn.softmax(z[:, None] / temperature + jnp.log(x), axis=0)
    if kind == "exp":
        return jnp.exp(z / temperature)[:, None] * x
    if kind == "linear":
        return z[:, None] * x
    raise ValueError(f"unknown attention kind {kind!r}; use one of {KINDS}")


def outputs(params: Params, task: Task, kind: str, temperature: float) -> jax.Array:
    """`(K, K)`: row k = output logits of the class-k sample, F^T W with F = U_C B + u_query."""
    mc = task.x.shape[0]
    f = task.u[:, :mc] @ attention(params.z, task.x, kind, temperature) + task.u[:, mc:]
    return f.T @ params.w


def loss_fn(params: Params, task: Task, kind: str, temperature: float) -> jax.Array:
    """Mean cross-entropy, one sample per class (label k for column k)."""
    logits = outputs(params, task, kind, temperature)
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits))


def invariant_quantity(z: jax.Array, kind: str) -> jax.Array:
    """The side of the invariant made of z: z^2 for linear attention, z otherwise."""
    return z * z if kind == "linear" else z


def _prediction_parts(params: Params, task: Task, kind: str, temperature: float):
    mc = task.x.shape[0]
    v = task.u[:, :mc].T @ params.w  # (M_c, K)
    v2 = jnp.sum(v * v, axis=1)
    if kind == "linear":
        return v2, jnp.zeros_like(v2), v
    if kind == "exp":
        return v2 / (2 * temperature), jnp.zeros_like(v2), v
    if kind == "softmax":
        return v2 / (2 * temperature), -task.xbar * jnp.sum(params.w * params.w) / (2 * temperature), v
    raise ValueError(f"unknown attention kind {kind!r}; use one of {KINDS}")


def invariant_prediction(params: Params, task: Task, kind: str, temperature: float,
                         constant: jax.Array | None = None) -> jax.Array:
    """`(M_c,)`: the invariant's prediction of `invariant_quantity(z)` from W alone, plus `constant`
    (C, fixed at t = 0 as quantity(z_0) - prediction(W_0) without constant)."""
    a, b, _ = _prediction_parts(params, task, kind, temperature)
    return a + b + (0.0 if constant is None else constant)


def normalized_correlation(a: jax.Array, b: jax.Array) -> jax.Array:
    """cos(a - mean a, b - mean b) over the last axis (nan-free: 0 for a constant vector)."""
    a = a - jnp.mean(a, axis=-1, keepdims=True)
    b = b - jnp.mean(b, axis=-1, keepdims=True)
    den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.sum(a * b, axis=-1) / jnp.maximum(den, jnp.finfo(a.dtype).tiny)


class State(NamedTuple):
    """One run's carry: `params`, `step_term` `(M_c,)` (the accumulated O(lr^2) part of SGD's steps),
    and the run's constants, so that one compiled step serves every seed and learning rate: `task`,
    `constant` `(M_c,)` (the invariant's C, fixed at t = 0), `lr` and `temperature` (0-d)."""

    params: Params
    step_term: jax.Array
    task: Task
    constant: jax.Array
    lr: jax.Array
    temperature: jax.Array


def init_state(params: Params, task: Task, *, kind: str = "softmax", temperature: float = 0.5,
               lr: float = 0.1) -> State:
    """The state at t = 0: params: w `(d, K)`, z `(M_c,)`; task: x `(M_c, K)`, u `(d, M_c + 1)`."""
    chex.assert_rank([params.w, params.z, task.x], [2, 1, 2])
    chex.assert_shape(params.z, (task.x.shape[0],))
    chex.assert_shape(params.w, (task.u.shape[0], task.x.shape[1]))
    _check_kind(kind)
    dtype = params.z.dtype
    constant = invariant_quantity(params.z, kind) - invariant_prediction(params, task, kind, temperature)
    return State(params, jnp.zeros_like(params.z), task, constant, jnp.asarray(lr, dtype),
                 jnp.asarray(temperature, dtype))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; use one of {KINDS}")


@dataclasses.dataclass(frozen=True)
class Step:
    """`step(state, t) -> (state, Record)` for `loop.run_steps`: one full-batch SGD step on (W, z) of
    `kind` attention, recording before the update. Static settings only: equal steps share a program."""

    kind: str = "softmax"

    def __call__(self, state: State, t: jax.Array) -> tuple[State, Record]:
        kind, p, task, lr, temperature = self.kind, state.params, state.task, state.lr, state.temperature
        acc, mc = state.step_term, task.x.shape[0]
        nan = jnp.full((), jnp.nan, p.z.dtype)
        loss, g = jax.value_and_grad(loss_fn)(p, task, kind, temperature)
        a, b, v = _prediction_parts(p, task, kind, temperature)
        predicted = a + b + state.constant
        real = invariant_quantity(p.z, kind)
        z_hat = jnp.sign(p.z) * jnp.sqrt(jnp.maximum(predicted, 0.0)) if kind == "linear" else predicted
        parts = ((normalized_correlation(real, a), normalized_correlation(real, b)) if kind == "softmax"
                 else (nan, nan))
        record = Record(loss, p.z, z_hat, normalized_correlation(real, predicted), *parts, v, acc,
                        normalized_correlation(real, predicted + acc),
                        jnp.mean(attention(p.z, task.x, kind, temperature), axis=1))
        # The second-order remainder of this step in quantity - prediction (module docstring).
        g_v2 = jnp.sum((task.u[:, :mc].T @ g.w) ** 2, axis=1)
        if kind == "linear":
            acc = acc + lr * lr * (g.z * g.z - g_v2)
        elif kind == "exp":
            acc = acc - lr * lr * g_v2 / (2 * temperature)
        else:
            acc = acc - lr * lr * (g_v2 - task.xbar * jnp.sum(g.w * g.w)) / (2 * temperature)
        return state._replace(params=jax.tree.map(lambda x, gx: x - lr * gx, p, g), step_term=acc), record


def make_step(kind: str = "softmax") -> Step:
    """The SGD step of `kind` attention (one of `KINDS`)."""
    _check_kind(kind)
    return Step(kind)


def train(params: Params, task: Task, *, kind: str = "softmax", temperature: float = 0.5, lr: float = 0.1,
          steps: int = 2000, chunk: int = 1000, directory=None, settings=None) -> tuple[Params, Record]:
    """Full-batch plain SGD on (W, z) for `steps`, recording the `Record` (host arrays, leading axis
    `steps`). With `directory`, `loop.run_steps` saves the run every `chunk` steps and a rerun resumes.

    params: w `(d, K)`, z `(M_c,)`; task: x `(M_c, K)`, u `(d, M_c + 1)`."""
    state = init_state(params, task, kind=kind, temperature=temperature, lr=lr)
    final, traj = run_steps(make_step(kind), state, steps, chunk=chunk, directory=directory, settings=settings)
    return final.params, traj


def entropy_toy_target(key: jax.Array, n: int = 10, low: float = 1.0, high: float = 4.0) -> jax.Array:
    """mu `(n,)`: sorted U(low, high) targets (the reference's sort(rand(10) * 3 + 1))."""
    return jnp.sort(jax.random.uniform(key, (n,), minval=low, maxval=high))


class EntropyState(NamedTuple):
    """The entropy toy's carry: v `(n,)`, and its constants mu `(n,)`, lr and temperature (0-d)."""

    v: jax.Array
    mu: jax.Array
    lr: jax.Array
    temperature: jax.Array


def entropy_step(state: EntropyState, t: jax.Array) -> tuple[EntropyState, tuple[jax.Array, jax.Array]]:
    """v <- v + lr (mu - v) ∘ softmax(v^2 / T); records (v, entropy of softmax(v^2 / T)) before it."""
    v = state.v
    a = jax.nn.softmax(v * v / state.temperature)
    h = -jnp.sum(a * jnp.log(a))
    return state._replace(v=v + state.lr * (state.mu - v) * a), (v, h)


def entropy_toy(mu: jax.Array, v0: jax.Array, *, lr: float = 0.02, temperature: float = 3.0,
                steps: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """Iterate v <- v + lr (mu - v) ∘ softmax(v^2 / T) from v0 `(n,)` (`entropy_step` on `run_steps`).

    Returns v `(steps, n)` and the entropy (nats) of softmax(v^2 / T) `(steps,)`, both before each
    step's update."""
    chex.assert_rank([mu, v0], 1)
    chex.assert_equal_shape([mu, v0])
    state = EntropyState(v0, mu, jnp.asarray(lr, v0.dtype), jnp.asarray(temperature, v0.dtype))
    _, (vs, hs) = run_steps(entropy_step, state, steps, chunk=steps)
    return vs, hs


# ----------------------------------------------------------------------------- verdicts

JUDGE_FROM = 100  # NC is 1 at t = 0 by construction of C, so it is judged from here on


def summarize(trajectory: Record, task: Task) -> dict:
    """One run's verdict: the smallest NC over t >= `JUDGE_FROM` (and where), its final NC, the
    smallest NC with SGD's step term added (1: the gap is the finite step), the largest drift of the
    class-averaged attention from xbar relative to max xbar (the softmax theorem assumes 0), the
    first step with the loss above its initial value (None: stable) and the smallest NC before it,
    and the loss and logit ranges. Host numpy."""
    traj = jax.tree.map(np.asarray, trajectory)
    nc, after = traj.nc, slice(JUDGE_FROM, None)
    xbar = np.asarray(task.xbar)
    above = np.flatnonzero(traj.loss > traj.loss[0])
    unstable = int(above[0]) if above.size else None
    # NC over t >= 100 up to the first unstable step (all of it for a stable run); nan if none left
    before = nc[JUDGE_FROM:unstable] if unstable is None or unstable > JUDGE_FROM else nc[:0]
    return {"min_nc_after_100": float(nc[after].min()),
            "argmin_nc_after_100": int(JUDGE_FROM + nc[after].argmin()),
            "final_nc": float(nc[-1]), "min_nc_with_step_term": float(traj.nc_stepped[after].min()),
            "max_attn_mean_drift": float(np.abs(traj.attn_mean - xbar).max() / xbar.max()),
            "first_step_loss_above_initial": unstable,
            "min_nc_before_instability": float(before.min()) if before.size else None,
            "initial_loss": float(traj.loss[0]), "max_loss": float(traj.loss.max()),
            "final_loss": float(traj.loss[-1]), "final_z_range": float(np.ptp(traj.z[-1])),
            "max_abs_z": float(np.abs(traj.z).max())}


def summarize_seeds(runs: list[dict]) -> dict:
    """Over seeds (each a `summarize` dict) of one attention kind and X: the worst and median
    smallest NC, the seeds above 0.99, the worst NC with the step term, the largest attention drift,
    the unstable seeds and their worst NC before instability."""
    minima = np.array([r["min_nc_after_100"] for r in runs])
    unstable = [r for r in runs if r["first_step_loss_above_initial"] is not None]
    return {"seeds": len(runs), "min": float(minima.min()), "median": float(np.median(minima)),
            "seeds_above_0.99": int(np.sum(minima > 0.99)),
            "min_with_step_term": float(min(r["min_nc_with_step_term"] for r in runs)),
            "max_attn_mean_drift": float(max(r["max_attn_mean_drift"] for r in runs)),
            "seeds_unstable": len(unstable),
            "min_nc_before_instability": min((r["min_nc_before_instability"] for r in unstable
                                              if r["min_nc_before_instability"] is not None), default=None)}
