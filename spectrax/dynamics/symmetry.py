"""Noether charges of rescaling and double-rotation symmetries under GD and SGD (Ziyin et al., the Ziyin talk).

A loss with an exponential symmetry l(theta) = l(exp(lambda A) theta) (A symmetric, every lambda,
every sample) has the charge C = theta^T A theta. Its gradient is orthogonal to A theta (d/d lambda
of the loss is 0), so one (S)GD step with weight decay gamma, theta' = (1 - lr gamma) theta - lr g
with g the minibatch loss gradient, changes the charge by exactly

    C_{t+1} = (1 - lr gamma)^2 C_t + lr^2 g^T A g                                     (recursion)

with no first-order term: gradient flow (lr -> 0, gamma = 0) conserves C (Noether), and a finite
step adds lr^2 g^T A g. Under GD g -> 0 at a minimum and the charge freezes near its start; under
SGD the minibatch gradient stays noisy at the minimum, lr^2 E[g^T A g] keeps acting, and C
relaxes to a noise equilibrium that does not depend on the initialization.

The three models here, each a `SymmetricModel` (loss + the two halves of its quadratic charge):

- `SCALAR`: theta = (u, w), loss mean (u w x - y)^2, rescaling u -> a u, w -> w / a, A = diag(1, -1),
  C = u^2 - w^2. The gradient is (w, u) rbar with rbar = mean 2 (u w x - y) x, so g^T A g = -rbar^2 C
  and the recursion is C_{t+1} = ((1 - lr gamma)^2 - lr^2 rbar_t^2) C_t: every step shrinks |C|.
  GD stops shrinking it once rbar -> 0; SGD (rbar^2 > 0 at the minimum, E rbar^2 = 4 mean(e^2 x^2)/B
  with e the residual at the least-squares slope) drives C to the equilibrium C* = 0, |u| = |w|,
  at the rate `scalar_charge_factor` per step.
- `FACTORIZATION`: f(x) = U W x, U `(d_out, r)`, W `(r, d_in)`; U -> U B^-1, W -> B W; the charges
  are the entries of D = U^T U - W W^T `(r, r)` (one per symmetric generator), with
  D_{t+1} = (1 - lr gamma)^2 D_t + lr^2 (G_U^T G_U - G_W G_W^T).
  At the minimum V = U W (the least-squares map, r = min(d_in, d_out)) the per-sample gradient
  with respect to V is 2 e x^T, and E[dD] = 0 (gamma = 0) is W S_x W^T = U^T S_e U with
  S_x = mean(|e|^2 x x^T), S_e = mean(|x|^2 e e^T) (`noise_weighted_moments`). Its solution is the
  balanced factorization of S_e^1/2 V S_x^1/2 (`factorization_equilibrium`), unique up to a
  rotation U -> U R, W -> R^T W (antisymmetric generators carry no charge), so the spectrum of D*
  is the prediction. For x ~ N(0, I) and label noise independent of x, S_x ∝ I, S_e ∝ Sigma_e and
  D* = (sqrt(c) - 1/sqrt(c)) R^T diag(s) R with c = d_out / d_in, s the singular values of V:
  balanced (D* = 0) only when d_in = d_out; the noise level cancels.
- `DEEP_LINEAR`: f(x) = W_L ... W_1 x, W_k `(d_k, d_{k-1})`; per hidden layer k = 1..L-1 the charge
  D_k = W_{k+1}^T W_{k+1} - W_k W_k^T `(d_k, d_k)` obeys the same recursion with the layer
  gradients. `spectrax.dynamics.deep_linear` holds its equilibrium (balance and alignment).

`train` runs GD (full batch) or SGD (minibatches from a keyed sampler) vmapped over a stack of
initializations with `spectrax.dynamics.loop.run_steps`, recording per step the loss, the charges,
and the largest relative error of the recursion against the actual optax step (in float64 it is
~1e-16).

Measured findings (which run, what held and what did not): docs/dynamics.md, "Findings by module", `symmetry`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectrax.dynamics.loop import run_steps

__all__ = [
    "Config",
    "Runs",
    "simulate",
    "summarize",
    "DEEP_LINEAR",
    "FACTORIZATION",
    "SCALAR",
    "Record",
    "Factors",
    "SymmetricModel",
    "charge",
    "charge_scale",
    "deep_linear_apply",
    "deep_linear_loss",
    "factorization_apply",
    "factorization_charge",
    "factorization_equilibrium",
    "factorization_loss",
    "full_batch",
    "layer_charges",
    "least_squares",
    "minibatches",
    "next_charge",
    "noise_weighted_moments",
    "online_batches",
    "optimizer",
    "quadratic_charge",
    "recursion_error",
    "scalar_apply",
    "scalar_charge",
    "scalar_charge_factor",
    "scalar_data",
    "scalar_generator",
    "scalar_loss",
    "teacher_data",
    "train",
]

Batch = tuple[jax.Array, jax.Array]
Sampler = Callable[[jax.Array], Batch]


class SymmetricModel(NamedTuple):
    """loss(params, x, y) -> scalar; charge_parts(params) -> (plus, minus): two pytrees of the same
    structure whose difference is the charge. The charge is quadratic, so charge_parts applied to a
    gradient gives the recursion's g^T A g, and plus + minus is the scale its rounding is judged by."""

    name: str
    loss: Callable[[Any, jax.Array, jax.Array], jax.Array]
    charge_parts: Callable[[Any], tuple[Any, Any]]


class Factors(NamedTuple):
    """f(x) = U W x: u `(d_out, r)`, w `(r, d_in)`."""

    u: jax.Array
    w: jax.Array


class Record(NamedTuple):
    """One record of `train` (per run; `train` stacks `(T, R, ...)`), taken before the record's
    steps: loss `()` on the batch of the first step; charge: the model's charge pytree;
    recursion_error `()` max over the record's steps of `recursion_error` (relative);
    observed: whatever `observe(params)` returns (None without `observe`)."""

    loss: jax.Array
    charge: Any
    recursion_error: jax.Array
    observed: Any = None


# ----------------------------------------------------------------------------- charges


def quadratic_charge(theta: jax.Array, generator: jax.Array) -> jax.Array:
    """theta^T A theta for a flat parameter vector theta `(n,)` and symmetric generator A `(n, n)`."""
    chex.assert_rank([theta, generator], [1, 2])
    chex.assert_shape(generator, (theta.shape[0], theta.shape[0]))
    return theta @ generator @ theta


def scalar_generator(dtype: Any = jnp.float32) -> jax.Array:
    """A = diag(1, -1) `(2, 2)`: the rescaling (u, w) -> (e^lambda u, e^-lambda w)."""
    return jnp.diag(jnp.array([1.0, -1.0], dtype))


def scalar_apply(theta: jax.Array, x: jax.Array) -> jax.Array:
    """u w x for theta = (u, w) `(2,)` and x `(B,)`."""
    chex.assert_shape(theta, (2,))
    return theta[0] * theta[1] * x


def scalar_loss(theta: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """mean over the batch of (u w x - y)^2; x, y `(B,)`."""
    chex.assert_rank([x, y], 1)
    r = scalar_apply(theta, x) - y
    return jnp.mean(r * r)


def scalar_charge(theta: jax.Array) -> jax.Array:
    """C = u^2 - w^2 = theta^T diag(1, -1) theta."""
    chex.assert_shape(theta, (2,))
    return theta[0] * theta[0] - theta[1] * theta[1]


def factorization_apply(params: Factors, x: jax.Array) -> jax.Array:
    """U W x per row of x `(B, d_in)` -> `(B, d_out)`."""
    chex.assert_rank([params.u, params.w, x], 2)
    return (x @ params.w.T) @ params.u.T


def factorization_loss(params: Factors, x: jax.Array, y: jax.Array) -> jax.Array:
    """mean over the batch of |U W x - y|^2; x `(B, d_in)`, y `(B, d_out)`."""
    r = factorization_apply(params, x) - y
    return jnp.sum(r * r) / x.shape[0]


def factorization_charge(params: Factors) -> jax.Array:
    """D = U^T U - W W^T `(r, r)`."""
    plus, minus = _factor_parts(params)
    return plus - minus


def _factor_parts(params: Factors) -> tuple[jax.Array, jax.Array]:
    chex.assert_rank([params.u, params.w], 2)
    chex.assert_equal(params.u.shape[1], params.w.shape[0])
    return params.u.T @ params.u, params.w @ params.w.T


def deep_linear_apply(weights: tuple[jax.Array, ...], x: jax.Array) -> jax.Array:
    """W_L ... W_1 x per row of x `(B, d_0)` -> `(B, d_L)`; weights = (W_1, ..., W_L), W_k `(d_k, d_{k-1})`."""
    h = x
    for w in weights:
        h = h @ w.T
    return h


def deep_linear_loss(weights: tuple[jax.Array, ...], x: jax.Array, y: jax.Array) -> jax.Array:
    """mean over the batch of |W_L ... W_1 x - y|^2."""
    r = deep_linear_apply(weights, x) - y
    return jnp.sum(r * r) / x.shape[0]


def _layer_parts(weights: tuple[jax.Array, ...]) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    if len(weights) < 2:
        raise ValueError(f"a deep linear net needs >= 2 layers for a charge (got {len(weights)})")
    chex.assert_rank(list(weights), 2)
    for below, above in zip(weights[:-1], weights[1:]):
        chex.assert_equal(above.shape[1], below.shape[0])
    plus = tuple(above.T @ above for above in weights[1:])
    minus = tuple(below @ below.T for below in weights[:-1])
    return plus, minus


def layer_charges(weights: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """(D_1, ..., D_{L-1}), D_k = W_{k+1}^T W_{k+1} - W_k W_k^T `(d_k, d_k)` (1-based k as in the
    source: W_1 is the input layer)."""
    plus, minus = _layer_parts(weights)
    return tuple(p - m for p, m in zip(plus, minus))


def _scalar_parts(theta: jax.Array) -> tuple[jax.Array, jax.Array]:
    chex.assert_shape(theta, (2,))
    return theta[0] * theta[0], theta[1] * theta[1]


SCALAR = SymmetricModel("scalar", scalar_loss, _scalar_parts)
FACTORIZATION = SymmetricModel("factorization", factorization_loss, _factor_parts)
DEEP_LINEAR = SymmetricModel("deep_linear", deep_linear_loss, _layer_parts)


def charge(model: SymmetricModel, params: Any) -> Any:
    """The model's charge pytree (plus - minus)."""
    plus, minus = model.charge_parts(params)
    return jax.tree.map(jnp.subtract, plus, minus)


def charge_scale(model: SymmetricModel, params: Any) -> Any:
    """plus + minus (u^2 + w^2, U^T U + W W^T, ...): the size of the two terms the charge is the
    difference of, which is what its rounding error is relative to."""
    plus, minus = model.charge_parts(params)
    return jax.tree.map(jnp.add, plus, minus)


def next_charge(model: SymmetricModel, current: Any, grads: Any, lr: float | jax.Array,
                weight_decay: float | jax.Array = 0.0) -> Any:
    """The recursion: (1 - lr gamma)^2 C_t + lr^2 Q(g), Q the charge's quadratic form, g the loss
    gradient (without the decay term) of the step's batch."""
    decay = (1.0 - lr * weight_decay) ** 2
    return jax.tree.map(lambda c, q: decay * c + lr * lr * q, current, charge(model, grads))


def recursion_error(model: SymmetricModel, params: Any, new_params: Any, grads: Any,
                    lr: float | jax.Array, weight_decay: float | jax.Array = 0.0) -> jax.Array:
    """max|C(new_params) - next_charge(C(params), grads)| / the largest |plus + minus| of params,
    new_params and lr^2 grads: the recursion's error relative to the size of the terms it adds up
    (float64 rounding: ~1e-16)."""
    predicted = next_charge(model, charge(model, params), grads, lr, weight_decay)
    actual = charge(model, new_params)
    err = jnp.max(jnp.stack([jnp.max(jnp.abs(a - p)) for a, p in
                             zip(jax.tree.leaves(actual), jax.tree.leaves(predicted))]))
    # Rounding is relative to the largest term of the identity: the parameters' or the step's.
    terms = (charge_scale(model, params), charge_scale(model, new_params),
             jax.tree.map(lambda q: lr * lr * q, charge_scale(model, grads)))
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(s)) for s in jax.tree.leaves(terms)]))
    return err / scale


# ----------------------------------------------------------------------------- data


def scalar_data(key: jax.Array, num: int, *, slope: float = 1.0, noise_std: float = 1.0,
                dtype: Any = jnp.float32) -> Batch:
    """x `(num,)` ~ N(0, 1), y = slope x + noise_std N(0, 1)."""
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (num,), dtype)
    return x, slope * x + noise_std * jax.random.normal(ke, (num,), dtype)


def teacher_data(key: jax.Array, num: int, teacher: jax.Array, *, input_scales: jax.Array | None = None,
                 noise_std: float = 1.0) -> Batch:
    """x `(num, d_in)` ~ N(0, diag(input_scales^2)), y = x V^T + noise_std N(0, I) `(num, d_out)`
    for the teacher V `(d_out, d_in)`; the dtype is the teacher's."""
    chex.assert_rank(teacher, 2)
    d_out, d_in = teacher.shape
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (num, d_in), teacher.dtype)
    if input_scales is not None:
        chex.assert_shape(input_scales, (d_in,))
        x = x * input_scales
    return x, x @ teacher.T + noise_std * jax.random.normal(ke, (num, d_out), teacher.dtype)


def full_batch(x: jax.Array, y: jax.Array) -> Sampler:
    """The whole data set every step (GD); ignores the key."""
    return lambda key: (x, y)


def minibatches(x: jax.Array, y: jax.Array, batch_size: int) -> Sampler:
    """`batch_size` rows drawn uniformly with replacement from (x, y) per key (SGD)."""
    if not 1 <= batch_size:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    n = x.shape[0]

    def sample(key: jax.Array) -> Batch:
        idx = jax.random.randint(key, (batch_size,), 0, n)
        return x[idx], y[idx]

    return sample


def online_batches(generate: Callable[[jax.Array, int], Batch], batch_size: int) -> Sampler:
    """Fresh samples from the data distribution per key (online SGD): generate(key, batch_size)."""
    if not 1 <= batch_size:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    return lambda key: generate(key, batch_size)


# ----------------------------------------------------------------------------- theory


def least_squares(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The least-squares map V `(d_out, d_in)` of y on x (rows are samples) and its residuals
    e = x V^T - y `(N, d_out)`: the minimum the product of a factorized linear model reaches."""
    chex.assert_rank([x, y], 2)
    v = jnp.linalg.lstsq(x, y)[0].T
    return v, x @ v.T - y


def noise_weighted_moments(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(V, S_x, S_e) at the least-squares minimum V: S_x = mean |e|^2 x x^T `(d_in, d_in)`,
    S_e = mean |x|^2 e e^T `(d_out, d_out)`. Per-sample gradients of the product are 2 e x^T, so
    E[G^T G] ∝ S_x and E[G G^T] ∝ S_e are the gradient-noise covariances on the two sides."""
    v, e = least_squares(x, y)
    n = x.shape[0]
    ee = jnp.sum(e * e, axis=1)
    xx = jnp.sum(x * x, axis=1)
    return v, (x * ee[:, None]).T @ x / n, (e * xx[:, None]).T @ e / n


def _sqrt_psd(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    vals, vecs = jnp.linalg.eigh(a)
    vals = jnp.maximum(vals, 0.0)
    return (vecs * jnp.sqrt(vals)) @ vecs.T, (vecs / jnp.sqrt(vals)) @ vecs.T


def factorization_equilibrium(x: jax.Array, y: jax.Array, rank: int) -> Factors:
    """SGD's noise equilibrium of f(x) = U W x on the data (x, y), gamma = 0, to leading order in lr.

    U* `(d_out, r)`, W* `(r, d_in)` with U* W* = V (least squares) and W* S_x W*^T = U*^T S_e U*
    (E[dD] = 0): U* = S_e^-1/2 P s^1/2, W* = s^1/2 Q^T S_x^-1/2 with P s Q^T the SVD of
    S_e^1/2 V S_x^1/2. Unique up to U R, R^T W, so compare `factorization_charge` spectra.
    Needs r = min(d_in, d_out) (the product can then reach V) and S_x, S_e of full rank."""
    chex.assert_rank([x, y], 2)
    d_in, d_out = x.shape[1], y.shape[1]
    if rank != min(d_in, d_out):
        raise ValueError(f"the equilibrium is derived for rank = min(d_in, d_out) = {min(d_in, d_out)} "
                         f"(got {rank}): a lower rank leaves a reduced-rank regression minimum")
    v, s_x, s_e = noise_weighted_moments(x, y)
    sx_half, sx_inv_half = _sqrt_psd(s_x)
    se_half, se_inv_half = _sqrt_psd(s_e)
    p, s, qt = jnp.linalg.svd(se_half @ v @ sx_half, full_matrices=False)
    root = jnp.sqrt(s[:rank])
    return Factors(se_inv_half @ (p[:, :rank] * root), (root[:, None] * qt[:rank]) @ sx_inv_half)


def scalar_charge_factor(x: jax.Array, y: jax.Array, *, lr: float, batch_size: int,
                         weight_decay: float = 0.0) -> jax.Array:
    """E[C_{t+1}] / C_t at the least-squares slope: (1 - lr gamma)^2 - lr^2 E[rbar^2] with
    E[rbar^2] = 4 mean(e^2 x^2) / B (B rows with replacement; the mean gradient is 0 there).
    SGD's charge decays like this factor^t towards C* = 0; GD's (B = all, no resampling) does not."""
    chex.assert_rank([x, y], 1)
    p = jnp.sum(x * y) / jnp.sum(x * x)
    e = p * x - y
    return (1.0 - lr * weight_decay) ** 2 - lr * lr * 4.0 * jnp.mean(e * e * x * x) / batch_size


# ----------------------------------------------------------------------------- training


def optimizer(lr: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Plain SGD with coupled weight decay: update = -lr (g + gamma theta)."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr))


def train(model: SymmetricModel, params: Any, sampler: Sampler, *, lr: float | jax.Array, steps: int,
          key: jax.Array, weight_decay: float | jax.Array = 0.0, every: int = 1,
          observe: Callable[[Any], Any] | None = None, chunk: int = 1000,
          directory: str | os.PathLike | None = None, settings: Mapping[str, Any] | None = None,
          progress: str | None = None) -> tuple[Any, Record]:
    """(S)GD on a stack of R runs, vmapped: params has a leading `(R,)` axis on every leaf; lr and
    weight_decay are scalars or `(R,)` arrays (a sweep in one compiled call).

    Step t of run r trains on `sampler(fold_in(fold_in(key, r), t))` (independent minibatch noise per
    run; `full_batch` is GD). A record is taken every `every` steps (T = steps // every records,
    `steps` must be a multiple), each a `Record` of `(T, R, ...)` host arrays. With
    `directory`, checkpoints via `run_steps` every `chunk` records and resumes runs with the same
    `settings`. Returns the final params `(R, ...)` and the trajectory.
    """
    if steps < 1 or every < 1 or steps % every:
        raise ValueError(f"steps ({steps}) must be a positive multiple of every ({every})")
    leaves = jax.tree.leaves(params)
    num_runs, dtype = leaves[0].shape[0], leaves[0].dtype
    chex.assert_tree_shape_prefix(params, (num_runs,))
    lrs = jnp.broadcast_to(jnp.asarray(lr, dtype), (num_runs,))
    decays = jnp.broadcast_to(jnp.asarray(weight_decay, dtype), (num_runs,))
    run_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(num_runs, dtype=jnp.int32))

    def one_step(p, opt_state, run_key, t, run_lr, run_decay):
        x, y = sampler(jax.random.fold_in(run_key, t))
        loss, grads = jax.value_and_grad(model.loss)(p, x, y)
        updates, opt_state = optimizer(run_lr, run_decay).update(grads, opt_state, p)
        new = optax.apply_updates(p, updates)
        return new, opt_state, loss, recursion_error(model, p, new, grads, run_lr, run_decay)

    def one_record(state, run_key, run_lr, run_decay, t):
        p, opt_state = state
        observed = None if observe is None else observe(p)
        c = charge(model, p)

        def inner(carry, i):
            q, s, worst = carry
            q, s, loss, err = one_step(q, s, run_key, t * every + i, run_lr, run_decay)
            return (q, s, jnp.maximum(worst, err)), loss

        (p, opt_state, worst), losses = jax.lax.scan(inner, (p, opt_state, jnp.zeros((), dtype)),
                                                     jnp.arange(every, dtype=jnp.int32))
        return (p, opt_state), Record(losses[0], c, worst, observed)

    def step(state, t):
        return jax.vmap(one_record, in_axes=(0, 0, 0, 0, None))(state, run_keys, lrs, decays, t)

    # plain SGD and the decay term keep no state, so any rate gives the same (empty) initial state
    state = (params, jax.vmap(optimizer(0.0, 0.0).init)(params))
    (final, _), traj = run_steps(step, state, steps // every, chunk=chunk, directory=directory,
                                 settings=settings, progress=progress)
    return final, traj


# ----------------------------------------------------------------------------- the Noether-charge experiment

SCALAR_INITS = ((0.3, 1.5), (0.8, 1.1), (1.0, 0.8), (2.0, 0.4))
TEACHER = ((1.0, -0.5, 0.3, 0.8), (0.2, 1.2, -0.7, 0.1))
INPUT_SCALES = (1.5, 1.0, 0.7, 0.4)
FACTOR_SCALES = (0.6, 1.0, 1.6)
DRIFT_LRS = (0.004, 0.002, 0.001, 0.0005)


@dataclasses.dataclass(frozen=True)
class Config:
    """`experiments/noether_charge.py` (float64): the scalar model (u w x − y)² on 256 samples from
    `SCALAR_INITS`, GD and SGD (batch 1) for `steps` (recorded every 10); the factorization U W on
    512 samples of `TEACHER` from `FACTOR_SCALES` inits for `factor_steps` (every 20); GD's charge
    drift at `DRIFT_LRS` after 5 steps and after `drift_steps` (every 100). Rate `lr`, PRNG `seed`."""

    steps: int = 6000
    factor_steps: int = 20000
    drift_steps: int = 16000
    lr: float = 0.02
    seed: int = 0

    def __post_init__(self):
        if (self.steps % 10 or self.factor_steps % 20 or self.drift_steps % 100
                or min(self.steps, self.factor_steps, self.drift_steps) < 100):
            raise ValueError("steps must be a multiple of 10, factor_steps of 20, drift_steps of 100 (all >= 100)")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


class Runs(NamedTuple):
    """The experiment's trajectories and the theory's inputs (host arrays). scalar, factor: per
    optimizer ("gd", "sgd") the `Record` trajectory `(T, R, ...)`; initial_charge `(R,)` of the
    scalar inits; charge_factor: SGD's predicted per-step factor of the scalar charge;
    predicted `(r,)`: the spectrum of the factorization's SGD equilibrium D*; initial_eigenvalues
    `(R, r)`; drift_short, drift_long `(L, R)`: GD's |C − C_0| per drift lr after 5 steps and
    after `drift_steps`; drift_loss `(T, L·R)`: the long drift runs' losses."""

    scalar: dict[str, Record]
    factor: dict[str, Record]
    initial_charge: np.ndarray
    charge_factor: float
    predicted: np.ndarray
    initial_eigenvalues: np.ndarray
    drift_short: np.ndarray
    drift_long: np.ndarray
    drift_loss: np.ndarray


def _factor_inits(seed: int) -> Factors:
    rng = np.random.default_rng(seed)
    u = np.stack([s * rng.normal(size=(2, 2)) for s in FACTOR_SCALES])
    w = np.stack([rng.normal(size=(2, 4)) / s for s in FACTOR_SCALES])
    return Factors(jnp.asarray(u), jnp.asarray(w))


def simulate(config: Config, *, directory: str | os.PathLike | None = None, progress: str | None = None) -> Runs:
    """Run the three parts; with `directory`, the long runs checkpoint in its subfolders and resume."""
    def ckpt(name):
        return None if directory is None else os.path.join(os.fspath(directory), name)

    lr, settings = config.lr, {"seed": config.seed, "lr": config.lr, "model": "noether_charge_v1"}
    with jax.enable_x64(True):
        key = jax.random.key(config.seed)
        x, y = scalar_data(jax.random.fold_in(key, 0), 256, dtype=jnp.float64)
        inits = jnp.asarray(SCALAR_INITS, jnp.float64)
        scalar = {}
        for name, sampler in (("gd", full_batch(x, y)), ("sgd", minibatches(x, y, 1))):
            _, scalar[name] = train(SCALAR, inits, sampler, lr=lr, steps=config.steps, every=10,
                                    key=jax.random.fold_in(key, 1), directory=ckpt(f"scalar_{name}"),
                                    settings={**settings, "part": f"scalar_{name}"}, progress=progress)
        xf, yf = teacher_data(jax.random.fold_in(key, 2), 512, jnp.asarray(TEACHER, jnp.float64),
                              input_scales=jnp.asarray(INPUT_SCALES, jnp.float64), noise_std=0.5)
        finits = _factor_inits(config.seed)
        factor = {}
        for name, sampler in (("gd", full_batch(xf, yf)), ("sgd", minibatches(xf, yf, 1))):
            _, factor[name] = train(FACTORIZATION, finits, sampler, lr=lr, steps=config.factor_steps, every=20,
                                    key=jax.random.fold_in(key, 3), directory=ckpt(f"factor_{name}"),
                                    settings={**settings, "part": f"factor_{name}"}, progress=progress)
        # GD drift vs lr: 4 lrs x 4 inits in one vmapped call per horizon
        lrs = np.asarray(DRIFT_LRS)
        sweep_inits = jnp.asarray(np.tile(np.asarray(SCALAR_INITS), (len(lrs), 1)))
        sweep_lr = jnp.asarray(np.repeat(lrs, len(SCALAR_INITS)))
        short, _ = train(SCALAR, sweep_inits, full_batch(x, y), lr=sweep_lr, steps=5, key=key)
        long, long_traj = train(SCALAR, sweep_inits, full_batch(x, y), lr=sweep_lr, steps=config.drift_steps,
                                every=100, key=key, progress=progress)
        c_sweep = np.asarray(jax.vmap(scalar_charge)(sweep_inits))
        drift = [np.abs(np.asarray(jax.vmap(scalar_charge)(p)) - c_sweep).reshape(len(lrs), -1) for p in (short, long)]
        return Runs(scalar, factor, np.asarray(jax.vmap(scalar_charge)(inits)),
                    float(scalar_charge_factor(x, y, lr=lr, batch_size=1)),
                    np.linalg.eigvalsh(np.asarray(factorization_charge(factorization_equilibrium(xf, yf, 2)))),
                    np.linalg.eigvalsh(np.asarray(jax.vmap(factorization_charge)(finits))), *drift,
                    np.asarray(long_traj.loss))


def _log_slope(lrs: np.ndarray, drift: np.ndarray) -> float:
    return float(np.polyfit(np.log(lrs), np.log(drift), 1)[0])


def summarize(runs: Runs, config: Config) -> dict[str, Any]:
    """The theory against the runs, as JSON-able numbers: the recursion's largest error; the
    scalar charge kept by GD and driven to C* = 0 by SGD (with the per-step log-rate against the
    prediction); the factorization's SGD spectrum against D*, its spread across inits against GD's;
    GD's drift against lr (log-log slopes: 2 after 5 steps, 1 to convergence)."""
    c0, d0, predicted, lrs = runs.initial_charge, runs.initial_eigenvalues, runs.predicted, np.asarray(DRIFT_LRS)
    gd, sgd = runs.scalar["gd"], runs.scalar["sgd"]
    t_scalar = np.arange(config.steps // 10) * 10
    late = t_scalar >= config.steps // 5
    half = runs.factor["sgd"].charge[len(runs.factor["sgd"].charge) // 2:]
    sgd_eigs = np.linalg.eigvalsh(half).mean(axis=0)  # (R, r)
    gd_eigs = np.linalg.eigvalsh(runs.factor["gd"].charge[-1])
    return {
        "setting": {"lr": config.lr, "steps": config.steps, "factor_steps": config.factor_steps,
                    "seed": config.seed, "dtype": "float64",
                    "scalar": {"num": 256, "inits": [list(i) for i in SCALAR_INITS], "batch": 1},
                    "factorization": {"teacher": [list(t) for t in TEACHER], "input_scales": list(INPUT_SCALES),
                                      "noise_std": 0.5, "num": 512, "rank": 2, "init_scales": list(FACTOR_SCALES),
                                      "batch": 1}},
        "recursion_error_max": max(float(np.max(r.recursion_error))
                                   for r in (*runs.scalar.values(), *runs.factor.values())),
        "scalar": {
            "initial_charge": c0.tolist(), "gd_final_charge": gd.charge[-1].tolist(),
            "sgd_final_charge": sgd.charge[-1].tolist(),
            "gd_max_relative_drift": float(np.max(np.abs(gd.charge[-1] - c0) / np.abs(c0))),
            "sgd_max_abs_final": float(np.max(np.abs(sgd.charge[-1]))),
            "predicted_equilibrium": 0.0,
            "predicted_log_factor_per_step": float(np.log(runs.charge_factor)),
            "measured_log_factor_per_step": [
                float(np.polyfit(t_scalar[late], np.log(np.abs(sgd.charge[late, r]) + 1e-300), 1)[0])
                for r in range(len(c0))],
        },
        "factorization": {
            "initial_eigenvalues": d0.tolist(), "predicted_eigenvalues": predicted.tolist(),
            "predicted_trace": float(predicted.sum()),
            "sgd_late_mean_eigenvalues": sgd_eigs.tolist(),
            "sgd_late_mean_trace": np.trace(half, axis1=-2, axis2=-1).mean(axis=0).tolist(),
            "sgd_spread_across_inits": float(np.ptp(sgd_eigs, axis=0).max()),
            "gd_final_eigenvalues": gd_eigs.tolist(), "gd_spread_across_inits": float(np.ptp(gd_eigs, axis=0).max()),
            "sgd_max_error_vs_prediction": float(np.abs(sgd_eigs - predicted).max()),
            "gd_max_relative_drift": float(np.abs(gd_eigs - d0).max() / np.abs(d0).max()),
        },
        "gd_drift": {"lrs": lrs.tolist(), "after_5_steps": runs.drift_short.tolist(),
                     "to_convergence": runs.drift_long.tolist(),
                     "slope_after_5_steps": [_log_slope(lrs, d) for d in runs.drift_short.T],
                     "slope_to_convergence": [_log_slope(lrs, d) for d in runs.drift_long.T],
                     "converged_loss_change": float(np.max(np.abs(runs.drift_loss[-1] - runs.drift_loss[-2])))},
    }
