"""Sharpness and the stability of gradient descent on rank-1 matrix factorization; warm-up.

Problem (the talk's "rank-1 matrix factorization", the Ziyin talk's Fig. 3, as a full-batch GD problem):

    L(u, v) = ½ ||u vᵀ − M||_F²,   u `(d1,)`, v `(d2,)`,   M = s a bᵀ `(d1, d2)` (a, b unit).

Hessian, with R = u vᵀ − M:

    H = [[ |v|² I_{d1},   R + u vᵀ  ],
         [ (R + u vᵀ)ᵀ,   |u|² I_{d2} ]].

Sharpness = λ_max(H). GD with step η is linearly stable at a minimum only if λ_max <= 2/η. The
minima are u vᵀ = M: u = α a, v = (s/α) b. There H = JᵀJ (R = 0) has eigenvalues |u|² + |v|², |v|²
(x d1−1), |u|² (x d2−1) and 0, so the sharpness of a minimum is |u|² + |v|². The rescaling
symmetry (u, v) -> (λu, v/λ) has the charge C = |u|² − |v|², conserved by gradient flow and by GD
up to η² (|R v|² − |Rᵀ u|²) per step, and on the minimum with charge C

    |u|² |v|² = s²  =>  λ_min-manifold(C) = |u|² + |v|² = sqrt(C² + 4 s²)   (>= 2s, balanced C = 0).

At initialization with i.i.d. N(0, σ²) entries, |u|² ≈ d1 σ², |v|² ≈ d2 σ² and |u||v| ≫ s for
σ ≈ 1: in the span of (u, 0), (0, v) the Hessian is [[|v|², 2|u||v|], [2|u||v|, |u|²]] + O(s), so the
sharpness starts near (|u|² + |v|²)/2 + sqrt(((|u|² − |v|²)/2)² + 4 |u|²|v|²) ≈ 3 d σ² (d1 = d2 = d),
while GD ends on the minimum with its (nearly conserved) charge, sharpness sqrt(C² + 4 s²) ~ 2 σ² sqrt(d)
(C has standard deviation 2 σ² sqrt(d)). The sharpness falls during training, by a factor ~ 1.5 sqrt(d):
a constant η must satisfy the strict condition at the start, where the threshold is lowest. A
warm-up (optax linear schedule from a small η) keeps η_t < 2/λ_max(t) while the product u vᵀ shrinks
onto M and the sharpness falls; the peak η then only needs the minimum's condition. The
opposite holds from a small initialization (σ → 0): the sharpness starts at s (the saddle at the
origin, eigenvalues ±s) and rises to sqrt(C² + 4s²) ≈ 2s (progressive sharpening), so warm-up
cannot help there. `experiments/stability_warmup.py` measures both the thresholds and the
sharpness trajectories.

Sharpness two ways: `sharpness_exact` (dense Hessian of the flattened parameters and `eigvalsh`,
for small problems) and `power_iteration` on Hessian-vector products (forward-over-reverse). Power
iteration finds the eigenvalue of largest magnitude, which need not be λ_max away from a minimum
(near the origin λ = ±s have the same magnitude); so it runs twice: once on H for the spectral
radius ρ, then on H + ρ I, whose dominant eigenvalue is λ_max + ρ. Both vectors are carried from
step to step in training (warm start), so a few iterations per step track the sharpness.

Measured findings (which run, what held and what did not): docs/dynamics.md, "Findings by module", `stability`.

GD runs are vmapped over a configuration axis (peak η, start fraction of the warm-up, seed) and
stepped by `spectrax.dynamics.loop.run_steps`. A run that blows up (loss above `blowup` or not
finite) is frozen and flagged: its later records are NaN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from spectrax.dynamics.loop import run_steps

__all__ = [
    "DEFAULT_ETAS",
    "SCHEDULES",
    "Config",
    "Factors",
    "Record",
    "State",
    "Summary",
    "Sweep",
    "hessian_vector_product",
    "init_factors",
    "init_state",
    "initial_sharpness_estimate",
    "loss_fn",
    "make_step",
    "make_target",
    "minimum_sharpness",
    "OUTCOMES",
    "outcome",
    "paths_configs",
    "power_iteration",
    "rerun_exact",
    "sharpness_exact",
    "sharpness_power",
    "showcase_configs",
    "simulate",
    "summarize",
    "summarize_showcase",
    "warmup_schedule",
]

Loss = Callable[[Any], jax.Array]


class Factors(NamedTuple):
    """u `(d1,)`, v `(d2,)`: the model u vᵀ `(d1, d2)`."""

    u: jax.Array
    v: jax.Array


class State(NamedTuple):
    """Training state, every leaf with a leading config axis `(C, ...)`: params; optax state;
    diverged `(C,)` bool; v_abs, v_top `(C, d1 + d2)` the power-iteration vectors (warm start)."""

    params: Factors
    opt_state: Any
    diverged: jax.Array
    v_abs: jax.Array
    v_top: jax.Array


class Record(NamedTuple):
    """Per step, before its update, per config `(C,)`: loss; sharpness λ_max(H); lr η_t;
    charge |u|² − |v|²; norm2 |u|² + |v|² (the sharpness of a minimum with these norms). NaN
    once a run has diverged."""

    loss: jax.Array
    sharpness: jax.Array
    lr: jax.Array
    charge: jax.Array
    norm2: jax.Array


# ----------------------------------------------------------------------------- problem


def make_target(key: jax.Array, d1: int, d2: int, scale: float = 1.0, dtype=jnp.float32) -> jax.Array:
    """M = scale · a bᵀ `(d1, d2)`, a and b uniform on the unit spheres (singular value `scale`)."""
    if d1 < 1 or d2 < 1 or scale <= 0:
        raise ValueError(f"need d1, d2 >= 1 and scale > 0 (got {d1}, {d2}, {scale})")
    ka, kb = jax.random.split(key)
    a = jax.random.normal(ka, (d1,), dtype)
    b = jax.random.normal(kb, (d2,), dtype)
    return jnp.asarray(scale, dtype) * jnp.outer(a / jnp.linalg.norm(a), b / jnp.linalg.norm(b))


def init_factors(key: jax.Array, d1: int, d2: int, scale: float = 1.0, dtype=jnp.float32) -> Factors:
    """u, v with i.i.d. N(0, scale²) entries."""
    ku, kv = jax.random.split(key)
    s = jnp.asarray(scale, dtype)
    return Factors(s * jax.random.normal(ku, (d1,), dtype), s * jax.random.normal(kv, (d2,), dtype))


def loss_fn(params: Factors, target: jax.Array) -> jax.Array:
    """½ ||u vᵀ − M||_F² for u `(d1,)`, v `(d2,)`, M `(d1, d2)`."""
    r = jnp.outer(params.u, params.v) - target
    return 0.5 * jnp.sum(r * r)


def minimum_sharpness(charge: jax.Array, s: jax.Array | float) -> jax.Array:
    """sqrt(C² + 4 s²): the sharpness of the minimum u vᵀ = s a bᵀ with charge |u|² − |v|² = C."""
    charge = jnp.asarray(charge)
    return jnp.sqrt(charge * charge + 4 * jnp.asarray(s, charge.dtype) ** 2)


def initial_sharpness_estimate(params: Factors) -> jax.Array:
    """λ_max of the Hessian restricted to span{(u, 0), (0, v)} with M dropped (|u||v| ≫ s):
    (p + q)/2 + sqrt(((p − q)/2)² + 4pq), p = |v|², q = |u|²."""
    p, q = jnp.sum(params.v * params.v), jnp.sum(params.u * params.u)
    return 0.5 * (p + q) + jnp.sqrt(0.25 * (p - q) ** 2 + 4 * p * q)


# ----------------------------------------------------------------------------- sharpness


def hessian_vector_product(loss: Loss, params: Any, vec: Any) -> Any:
    """H(params) · vec for any pytree `params` (forward-over-reverse; no Hessian is formed)."""
    return jax.jvp(jax.grad(loss), (params,), (vec,))[1]


def sharpness_exact(loss: Loss, params: Any) -> jax.Array:
    """λ_max of the dense Hessian of `loss` over the flattened `params` (n = #parameters; O(n²)
    memory, for small problems and for checking `power_iteration`)."""
    flat, unravel = ravel_pytree(params)
    h = jax.hessian(lambda x: loss(unravel(x)))(flat)
    return jnp.linalg.eigvalsh(0.5 * (h + h.T))[-1]


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x), jnp.finfo(x.dtype).tiny)


def power_iteration(loss: Loss, params: Any, v_abs: jax.Array, v_top: jax.Array,
                    num_iters: int = 20) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """λ_max(H) by shifted power iteration on Hessian-vector products.

    v_abs, v_top `(n,)` start vectors over the flattened params (n = #parameters; any nonzero).
    `num_iters` products on H give ρ ≈ max |λ| (from below); `num_iters` more on H + ρ I give its
    dominant eigenvalue λ_max + ρ. Returns (λ_max, ρ, v_abs, v_top), the vectors to warm-start
    the next call.
    """
    chex.assert_rank([v_abs, v_top], 1)
    flat, unravel = ravel_pytree(params)
    chex.assert_shape([v_abs, v_top], flat.shape)

    def hv(x: jax.Array) -> jax.Array:
        return ravel_pytree(hessian_vector_product(loss, params, unravel(x)))[0]

    def radius(_, x):
        return _normalize(hv(x))

    v_abs = jax.lax.fori_loop(0, num_iters, radius, _normalize(v_abs))
    rho = jnp.linalg.norm(hv(v_abs))

    def shifted(_, x):
        return _normalize(hv(x) + rho * x)

    v_top = jax.lax.fori_loop(0, num_iters, shifted, _normalize(v_top))
    return jnp.vdot(v_top, hv(v_top)), rho, v_abs, v_top


def sharpness_power(loss: Loss, params: Any, key: jax.Array, num_iters: int = 100) -> jax.Array:
    """λ_max(H) by `power_iteration` from random start vectors (`key`), cold."""
    n = ravel_pytree(params)[0].shape[0]
    dtype = ravel_pytree(params)[0].dtype
    k1, k2 = jax.random.split(key)
    return power_iteration(loss, params, jax.random.normal(k1, (n,), dtype), jax.random.normal(k2, (n,), dtype),
                           num_iters)[0]


# ----------------------------------------------------------------------------- training


def warmup_schedule(peak: jax.Array | float, warmup_steps: int, start_fraction: jax.Array | float) -> optax.Schedule:
    """η_t linear from `start_fraction · peak` to `peak` over `warmup_steps` steps, then `peak`
    (optax.linear_schedule). `start_fraction = 1` is a constant rate; `peak` and `start_fraction`
    may be traced (vmapped) arrays."""
    if warmup_steps < 1:
        raise ValueError(f"warmup_steps must be >= 1 (got {warmup_steps})")
    peak = jnp.asarray(peak)
    base = optax.linear_schedule(init_value=peak * start_fraction, end_value=peak, transition_steps=warmup_steps)
    # optax divides the int32 step count, which gives float32; count in the rate's dtype keeps
    # float64 runs float64 (and strict dtype promotion happy)
    return lambda count: base(jnp.asarray(count).astype(peak.dtype))


def _optimizer(peak, warmup_steps, start_fraction) -> optax.GradientTransformation:
    return optax.sgd(warmup_schedule(peak, warmup_steps, start_fraction))


def init_state(params: Factors, target: jax.Array, peaks: jax.Array, start_fractions: jax.Array,
               warmup_steps: int, key: jax.Array, *, power_iters: int = 200) -> State:
    """The state of C vmapped GD runs. params: u `(C, d1)`, v `(C, d2)`; target M `(d1, d2)`;
    peaks, start_fractions `(C,)`. The power-iteration vectors start from `key` and are converged
    at the initial params by `power_iters` iterations, so the first recorded sharpness is exact."""
    chex.assert_rank([params.u, params.v, target, peaks, start_fractions], [2, 2, 2, 1, 1])
    c = peaks.shape[0]
    chex.assert_shape([params.u, params.v], [(c, None), (c, None)])
    chex.assert_shape(start_fractions, (c,))
    opt_state = jax.vmap(lambda p, e, f: _optimizer(e, warmup_steps, f).init(p))(params, peaks, start_fractions)
    n = params.u.shape[1] + params.v.shape[1]
    k1, k2 = jax.random.split(key)
    dtype = params.u.dtype
    v_abs, v_top = jax.random.normal(k1, (c, n), dtype), jax.random.normal(k2, (c, n), dtype)
    _, _, v_abs, v_top = jax.vmap(lambda p, a, b: power_iteration(lambda q: loss_fn(q, target), p, a, b,
                                                                  power_iters))(params, v_abs, v_top)
    return State(params, opt_state, jnp.zeros((c,), bool), v_abs, v_top)


def make_step(target: jax.Array, peaks: jax.Array, start_fractions: jax.Array, warmup_steps: int, *,
              method: str = "power", power_iters: int = 5, blowup: float = 1e8):
    """`step(state, t) -> (state, Record)` for `run_steps`: one full-batch GD step (optax
    SGD with `warmup_schedule`) of each of C configs, vmapped. The sharpness is tracked by
    `power_iters` warm-started power iterations per step (`method="power"`) or from the dense
    Hessian (`"exact"`, small problems). target M `(d1, d2)`; peaks, start_fractions `(C,)`."""
    chex.assert_rank([target, peaks, start_fractions], [2, 1, 1])
    chex.assert_equal_shape([peaks, start_fractions])
    if method not in ("power", "exact"):
        raise ValueError(f"unknown sharpness method {method!r}; use 'power' or 'exact'")

    def one(params, opt_state, diverged, v_abs, v_top, peak, frac, t):
        def loss(p):
            return loss_fn(p, target)

        value, grad = jax.value_and_grad(loss)(params)
        if method == "power":
            sharp, _, v_abs_new, v_top_new = power_iteration(loss, params, v_abs, v_top, power_iters)
        else:
            sharp, v_abs_new, v_top_new = sharpness_exact(loss, params), v_abs, v_top
        opt = _optimizer(peak, warmup_steps, frac)
        lr = warmup_schedule(peak, warmup_steps, frac)(t)  # = the rate optax applies at step t
        updates, opt_new = opt.update(grad, opt_state, params)
        params_new = optax.apply_updates(params, updates)
        bad = diverged | ~jnp.isfinite(value) | (value > blowup)
        keep = lambda old, new: jax.tree.map(lambda a, b: jnp.where(bad, a, b), old, new)  # noqa: E731
        nan = jnp.full((), jnp.nan, value.dtype)
        uu, vv = jnp.sum(params.u * params.u), jnp.sum(params.v * params.v)
        record = Record(*(jnp.where(bad, nan, x) for x in (value, sharp, lr.astype(value.dtype), uu - vv,
                                                                    uu + vv)))
        state = (keep(params, params_new), keep(opt_state, opt_new), bad, keep(v_abs, v_abs_new),
                 keep(v_top, v_top_new))
        return state, record

    def step(state: State, t: jax.Array) -> tuple[State, Record]:
        new, record = jax.vmap(one, in_axes=(0,) * 7 + (None,))(*state, peaks, start_fractions, t)
        return State(*new), record

    return step


OUTCOMES = ("not converged", "converged", "diverged", "unstable stall")


def outcome(record: Record, *, tol: float = 1e-12, margin: float = 1e-3) -> jax.Array:
    """Per config, from a trajectory (leaves `(T, C)`, NaN after divergence), an index into
    `OUTCOMES`: 2 = diverged (a NaN); 1 = converged: final loss <= tol at a linearly stable
    minimum, λ_max <= (2/η_final)(1 + margin); 3 = final loss <= tol at a minimum with
    λ_max > 2/η_final: GD's map is unstable there, but the residual is so small that the updates
    round away (a run that converged while a warm-up's η_t was still small and froze); in exact
    arithmetic it would leave; 0 = none of these (still above tol after T steps)."""
    chex.assert_rank([record.loss, record.sharpness, record.lr], 2)
    diverged = jnp.any(jnp.isnan(record.loss), axis=0)
    small = record.loss[-1] <= tol
    stable = record.sharpness[-1] * record.lr[-1] <= 2 * (1 + margin)
    code = jnp.where(small, jnp.where(stable, 1, 3), 0)
    return jnp.where(diverged, 2, code).astype(jnp.int32)


# ----------------------------------------------------------------------------- the sweep and its verdicts

DEFAULT_ETAS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
                0.9, 1.0, 1.1, 1.2, 1.5)
SCHEDULES = ("constant", "warmup")


@dataclasses.dataclass(frozen=True)
class Config:
    """The sweep of `experiments/stability_warmup.py`: u, v in R^d, target singular value `sigma`,
    every (init scale, schedule, peak η, seed) run `steps` float64 GD steps; the warm-up goes
    linearly from `start_fraction` η to η over `warmup_steps`; `power_iters` warm-started power
    iterations per step and phase; a run converged when its final loss is <= `tol` at a minimum
    stable at its η. `showcase_eta`: the peak η of the constant-against-warm-up pair (if seed 0
    does not diverge constant and converge warmed up there, the largest grid η where it does).
    `etas` are kept sorted."""

    d: int = 16
    steps: int = 5000
    warmup_steps: int = 200
    start_fraction: float = 0.02
    seeds: int = 8
    etas: tuple[float, ...] = DEFAULT_ETAS
    init_scales: tuple[float, ...] = (1.0, 0.01)
    power_iters: int = 5
    seed: int = 0
    showcase_eta: float = 0.5
    sigma: float = 1.0
    tol: float = 1e-12

    def __post_init__(self):
        object.__setattr__(self, "etas", tuple(sorted(float(e) for e in self.etas)))
        object.__setattr__(self, "init_scales", tuple(float(x) for x in self.init_scales))
        if self.power_iters < 1:
            raise ValueError("need power_iters >= 1")
        if (self.d < 2 or self.steps < 2 or self.seeds < 1 or not 1 <= self.warmup_steps < self.steps
                or not 0 < self.start_fraction <= 1):
            raise ValueError("need d >= 2, steps >= 2, seeds >= 1, 1 <= warmup_steps < steps, 0 < start_fraction <= 1")
        if len(self.etas) < 2 or self.etas[0] <= 0:
            raise ValueError(f"etas must be at least two positive learning rates (got {self.etas})")
        if not self.init_scales or min(self.init_scales) <= 0:
            raise ValueError(f"init_scales must be positive numbers (got {self.init_scales})")

    def grid(self) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The flattened configuration axis, ordered (init, schedule, η, seed): its shape
        `(I, 2, E, S)`, and per configuration the init index, schedule index, η index, seed."""
        shape = (len(self.init_scales), len(SCHEDULES), len(self.etas), self.seeds)
        return (shape, *(a.ravel() for a in np.indices(shape)))


class Sweep(NamedTuple):
    """A simulated sweep (float64): target M `(d, d)`, the initial params `(C, d)` each, the
    per-configuration peak η and warm-up start fraction `(C,)`, the power-iteration key, the final
    state, the trajectory `(T, C)` (host arrays) and the dense-Hessian sharpness at the end `(C,)`."""

    target: jax.Array
    params: Factors
    peaks: jax.Array
    fractions: jax.Array
    key_power: jax.Array
    final: State
    trajectory: Record
    sharpness_final_exact: np.ndarray


def simulate(config: Config, *, directory=None, progress: str | None = None, chunk: int = 1000) -> Sweep:
    """Run every configuration of `config` as one vmapped GD (resumable in `directory`)."""
    settings = {"d": config.d, "warmup_steps": config.warmup_steps, "start_fraction": config.start_fraction,
                "seeds": config.seeds, "etas": list(config.etas), "init_scales": list(config.init_scales),
                "power_iters": config.power_iters, "seed": config.seed, "sigma": config.sigma, "dtype": "float64"}
    with jax.enable_x64(True):
        d = config.d
        key_target, key_init, key_power = jax.random.split(jax.random.key(config.seed), 3)
        target = make_target(key_target, d, d, config.sigma, jnp.float64)
        _, ii, kk, ee, ss = config.grid()
        peaks = jnp.asarray(np.asarray(config.etas)[ee])
        fracs = jnp.asarray(np.where(kk == 0, 1.0, config.start_fraction))
        # one draw per seed, scaled per init: the small init is the large one shrunk
        base = jax.vmap(lambda s: init_factors(jax.random.fold_in(key_init, s), d, d, 1.0, jnp.float64))(
            jnp.arange(config.seeds))
        scales = jnp.asarray(np.asarray(config.init_scales)[ii])
        params = Factors(base.u[ss] * scales[:, None], base.v[ss] * scales[:, None])
        state = init_state(params, target, peaks, fracs, config.warmup_steps, key_power)
        step = make_step(target, peaks, fracs, config.warmup_steps, power_iters=config.power_iters)
        final, traj = run_steps(step, state, config.steps, chunk=chunk, directory=directory, settings=settings,
                                progress=progress)
        exact = np.asarray(jax.vmap(lambda p: sharpness_exact(lambda q: loss_fn(q, target), p))(final.params))
        return Sweep(target, params, peaks, fracs, key_power, final, traj, exact)


def rerun_exact(sweep: Sweep, config: Config, configs, *, chunk: int = 1000) -> Record:
    """The trajectory `(T, len(configs))` of the given configurations again, with the sharpness
    from the dense Hessian at every step."""
    with jax.enable_x64(True):
        idx = jnp.asarray(configs)
        sub = Factors(sweep.params.u[idx], sweep.params.v[idx])
        peaks, fracs = sweep.peaks[idx], sweep.fractions[idx]
        step = make_step(sweep.target, peaks, fracs, config.warmup_steps, method="exact")
        state = init_state(sub, sweep.target, peaks, fracs, config.warmup_steps, sweep.key_power)
        return run_steps(step, state, config.steps, chunk=chunk)[1]


def _largest(etas: np.ndarray, ok: np.ndarray) -> float:
    """Largest η of the grid with ok (`(E,)` bool); nan if none."""
    return float(etas[np.flatnonzero(ok)[-1]]) if ok.any() else float("nan")


class Summary(NamedTuple):
    """What a sweep shows. code `(C,)`: index into `OUTCOMES` per configuration; runs (per
    configuration), sweep (per init, schedule, η) and seeds (per init, seed): table columns;
    limits: per init scale (`f"{scale:g}"`), the median λ_0, 2/λ_0, and per schedule the largest η
    at which all seeds converge, the first η with a divergence, the median per-seed largest η;
    outcome_counts; final_rel_max: the largest relative gap between the tracked sharpness and the
    dense Hessian's at runs that ended on a fixed point (None if none did)."""

    code: np.ndarray
    runs: dict[str, np.ndarray]
    sweep: dict[str, np.ndarray]
    seeds: dict[str, np.ndarray]
    limits: dict[str, dict[str, float]]
    outcome_counts: dict[str, int]
    final_rel_max: float | None


def summarize(trajectory: Record, config: Config, sharpness_final_exact: np.ndarray) -> Summary:
    """The thresholds against a sweep's `trajectory` (leaves `(T, C)`) and the dense-Hessian
    sharpness of every run's end point `(C,)`; numpy on host arrays."""
    etas, scales, sigma = np.asarray(config.etas), config.init_scales, config.sigma
    shape, ii, kk, ee, ss = config.grid()
    with jax.enable_x64(True):
        code = np.asarray(outcome(jax.tree.map(jnp.asarray, trajectory), tol=config.tol))
        loss, sharp, charge = (np.asarray(x, np.float64) for x in (trajectory.loss, trajectory.sharpness,
                                                                   trajectory.charge))
        min_sharp = np.asarray(minimum_sharpness(jnp.asarray(charge[-1]), sigma))
        min_sharp_0 = np.asarray(minimum_sharpness(jnp.asarray(charge[0]), sigma))
    exact = np.asarray(sharpness_final_exact)
    # the tracked sharpness against the dense Hessian, compared on runs at a fixed point only (the
    # record is taken before the last update; runs not converged may sit on a period-2 orbit)
    alive, fixed = code != 2, (code == 1) | (code == 3)
    final_rel = np.abs(sharp[-1, fixed] - exact[fixed]) / np.abs(exact[fixed])
    peaks = etas[ee]
    runs = {"init_scale": np.asarray(scales)[ii], "schedule": np.asarray(SCHEDULES)[kk], "eta": peaks, "seed": ss,
            "outcome": np.asarray(OUTCOMES)[code], "final_loss": loss[-1], "max_loss": np.nanmax(loss, axis=0),
            "sharpness_initial": sharp[0], "sharpness_final": sharp[-1],
            "sharpness_final_exact": np.where(alive, exact, np.nan), "two_over_eta": 2 / peaks,
            "charge_initial": charge[0], "charge_final": charge[-1], "minimum_sharpness_final": min_sharp}
    grid, cfg = code.reshape(shape), np.arange(code.size).reshape(shape)
    sweep = {k: [] for k in ("init_scale", "schedule", "eta", "converged", "diverged", "not_converged",
                             "unstable_stall", "final_loss_median", "sharpness_initial_median",
                             "sharpness_final_median", "two_over_eta")}
    limits = {}
    for i, scale in enumerate(scales):
        for k, name in enumerate(SCHEDULES):
            for e, eta in enumerate(etas):
                idx = cfg[i, k, e]
                counts = np.bincount(grid[i, k, e], minlength=4)
                ok = code[idx] != 2
                sweep["init_scale"].append(scale)
                sweep["schedule"].append(name)
                sweep["eta"].append(eta)
                for c, col in enumerate(("not_converged", "converged", "diverged", "unstable_stall")):
                    sweep[col].append(int(counts[c]))
                sweep["final_loss_median"].append(float(np.median(loss[-1, idx])) if ok.all() else float("nan"))
                sweep["sharpness_initial_median"].append(float(np.median(sharp[0, idx])))
                sweep["sharpness_final_median"].append(float(np.median(sharp[-1, idx[ok]])) if ok.any()
                                                       else float("nan"))
                sweep["two_over_eta"].append(2 / eta)
            lam0 = float(np.median(sharp[0, cfg[i, 0, 0]]))
            lim = limits.setdefault(f"{scale:g}", {"sharpness_initial_median": lam0, "two_over_lambda0": 2 / lam0})
            lim[f"eta_max_all_{name}"] = _largest(etas, (grid[i, k] == 1).all(axis=1))
            diverged = (grid[i, k] == 2).any(axis=1)
            lim[f"eta_first_divergence_{name}"] = float(etas[np.flatnonzero(diverged)[0]]) if diverged.any() \
                else float("nan")
            stars = np.array([_largest(etas, grid[i, k, :, j] == 1) for j in range(config.seeds)])
            lim[f"eta_star_median_{name}"] = float(np.median(stars[np.isfinite(stars)])) \
                if np.isfinite(stars).any() else float("nan")
    # per seed: the largest η each schedule converges at, against the sharpness predictions
    first = cfg[:, 0, 0, :]  # (I, S): the constant-η run at the smallest η, for the init's numbers
    seeds = {"init_scale": np.repeat(scales, config.seeds), "seed": np.tile(np.arange(config.seeds), len(scales)),
             "sharpness_initial": sharp[0, first].ravel(), "charge_initial": charge[0, first].ravel(),
             "two_over_lambda0": 2 / sharp[0, first].ravel(),
             "two_over_min_sharpness_at_C0": 2 / min_sharp_0[first].ravel()}
    for k, name in enumerate(SCHEDULES):
        seeds[f"eta_star_{name}"] = np.array([[_largest(etas, grid[i, k, :, j] == 1) for j in range(config.seeds)]
                                              for i in range(len(scales))]).ravel()
    return Summary(code, runs, {k: np.asarray(v) for k, v in sweep.items()}, seeds, limits,
                   {name: int((code == c).sum()) for c, name in enumerate(OUTCOMES)},
                   float(final_rel.max()) if final_rel.size else None)


def showcase_configs(summary: Summary, config: Config) -> tuple[float, list[int]] | None:
    """The constant-against-warm-up pair (largest init, seed 0): `(η, [constant, warm-up])` at
    `showcase_eta` if there the constant run diverges and the warm-up converges, else at the largest
    grid η where that happens; None if nowhere."""
    shape = config.grid()[0]
    grid, cfg = summary.code.reshape(shape), np.arange(summary.code.size).reshape(shape)
    etas, big = np.asarray(config.etas), int(np.argmax(config.init_scales))
    fits = (grid[big, 0, :, 0] == 2) & (grid[big, 1, :, 0] == 1)
    near = np.flatnonzero(np.isclose(etas, config.showcase_eta))
    e = int(near[0]) if near.size and fits[near[0]] else (int(np.flatnonzero(fits)[-1]) if fits.any() else None)
    return None if e is None else (float(etas[e]), [int(cfg[big, 0, e, 0]), int(cfg[big, 1, e, 0])])


def summarize_showcase(trajectory: Record, exact: Record, pair: list[int], eta: float, summary: Summary) -> dict:
    """The showcase pair's verdict: outcomes, when the constant run diverged, the sharpness from
    start to end of the warm-up run against its minimum's, and the tracked (power-iteration)
    sharpness against the dense Hessian's `exact` trajectory `(T, 2)` along the way."""
    loss, sharp, charge = (np.asarray(x) for x in (trajectory.loss, trajectory.sharpness, trajectory.charge))
    power, dense = sharp[:, pair], np.asarray(exact.sharpness)
    both = np.isfinite(power) & np.isfinite(dense)
    rel = np.abs(power - dense)[both] / np.abs(dense[both])
    return {"eta": eta, "configs": pair, "outcome": [OUTCOMES[summary.code[j]] for j in pair],
            "power_vs_exact_max_rel": float(rel.max()), "power_vs_exact_median_rel": float(np.median(rel)),
            "power_vs_exact_frac_within_1e-6": float(np.mean(rel < 1e-6)),
            "diverged_at_step": int(np.argmax(np.isnan(loss[:, pair[0]]))),
            "sharpness_initial": float(sharp[0, pair[0]]), "sharpness_final_warmup": float(sharp[-1, pair[1]]),
            "minimum_sharpness_final_warmup": float(summary.runs["minimum_sharpness_final"][pair[1]]),
            "charge_initial": float(charge[0, pair[1]]), "charge_final_warmup": float(charge[-1, pair[1]])}


def paths_configs(summary: Summary, config: Config) -> tuple[float, np.ndarray]:
    """`(η, configurations)` for the sharpness-path figure: every seed of every init at constant η,
    the largest grid η within every init's stable range (η <= 1/λ_0 of the sharpest)."""
    etas = np.asarray(config.etas)
    bound = min(1 / summary.limits[f"{sc:g}"]["sharpness_initial_median"] for sc in config.init_scales)
    e = max(int(np.searchsorted(etas, bound, side="right")) - 1, 0)
    cfg = np.arange(summary.code.size).reshape(config.grid()[0])
    return float(etas[e]), cfg[:, 0, e].ravel()
