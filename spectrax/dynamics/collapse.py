"""Weight-decay collapse: past a threshold γ, the symmetric state (the origin) is the minimum.

Two models with a parameter symmetry and L2 regularization γ (the Ziyin talk, docs/dynamics.md, Setups, "Symmetry and
noise"); data enter only through the moments a = E[xy], b = E[x²] > 0, c = E[y²] (`Moments`).

Product model (rescaling symmetry (u, w) -> (λu, w/λ), and the sign flip (u, w) -> (−u, −w)):

    L(u, w) = E[(u w x − y)²] + γ (u² + w²) = b p² − 2 a p + c + γ (u² + w²),   p = u w.

For fixed p, u² + w² >= 2|p| with equality iff |u| = |w|, so every minimum is balanced and
minimizes b p² − 2 a p + 2γ|p| (convex in p):

    p* = sign(a) (|a| − γ) / b   if γ < |a|,   else p* = 0;   |u| = |w| = sqrt(|p*|).

The origin's Hessian is [[2γ, −2a], [−2a, 2γ]], eigenvalues 2(γ ± |a|): the origin is a minimum
iff γ > |a| (a saddle below). Threshold γ_c = |E[xy]|.

The talk's model (sign symmetry w -> −w):

    L(w) = E[(w² x − y)²] + γ w² = b q² − (2a − γ) q + c,   q = w² >= 0.

Convex in q on q >= 0, minimized at q* = (2a − γ) / (2b) if γ < 2a, else q* = 0. Near the origin
L = c + (γ − 2a) w² + b w⁴: the origin is a minimum iff γ > 2a (at γ = 2a it is still one, by the
quartic term). Threshold γ_c = 2 E[xy] (for E[xy] <= 0 the origin is the minimum for every γ >= 0):

    w² = (2 E[xy] − γ) / (2 E[x²])  below γ_c,   w = 0 above.

Both transitions are continuous (the order parameter |p*| or q* falls linearly to 0 at γ_c):
since L is convex in p (resp. q), there is no intermediate γ with a metastable symmetric state;
the talk's "small / intermediate / large γ" landscapes are the double well deepening into one
well. Near γ_c, GD slows down critically: the curvature along the order parameter is
~ 4 b |p*| = 4 (|a| − γ) below (2(γ − |a|) at the origin above), so convergence takes ~ 1/(η |γ − γ_c|)
steps; `experiments/symmetry_collapse.py` shows the errors growing there.

Weight decay also fixes the free direction of the symmetry: with g = ∇ of the data term (so that
u g_u = w g_w by the symmetry), the charge C = u² − w² obeys exactly, per GD step of rate η,

    C' = (1 − 2ηγ)² C + η² (g_u² − g_w²)

(docs/dynamics.md, Setups writes (1 − ηγ)² for the decay convention Δθ = −η(∇ + γθ); the penalty γ(u² + w²) here
decays by 2ηγ). C decays to 0 for γ > 0; at γ = 0 it keeps its initial value up to the O(η²)
terms, and GD ends on an unbalanced point of the minimum manifold u w = E[xy] / E[x²].

Measured findings (which run, what held and what did not): docs/dynamics.md, "Findings by module", `collapse`.

GD runs are vmapped over a (γ, seed) grid, several GD steps per recorded step, under
`spectrax.dynamics.loop.run_steps`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectrax.dynamics.loop import run_steps

__all__ = [
    "MODELS",
    "Config",
    "Moments",
    "Record",
    "State",
    "Summary",
    "estimate_threshold",
    "init_state",
    "loss_product",
    "loss_square",
    "make_data",
    "make_step",
    "moments",
    "settle_step",
    "simulate",
    "solution_product",
    "solution_square",
    "threshold_product",
    "summarize",
    "threshold_square",
]

MODELS = ("product", "square")


class Moments(NamedTuple):
    """Scalars xx = E[x²], xy = E[xy], yy = E[y²] of a data set (all the losses need)."""

    xx: jax.Array
    xy: jax.Array
    yy: jax.Array


class State(NamedTuple):
    """u, w `(G, S)` of the product model, v `(G, S)` of the talk's model (its w), and the optax
    states of both, over G values of γ and S seeds."""

    u: jax.Array
    w: jax.Array
    v: jax.Array
    opt_product: optax.OptState
    opt_square: optax.OptState


class Record(NamedTuple):
    """After each recorded step, `(G, S)`: u, w, charge u² − w², the product model's loss; v and
    the talk's model's loss."""

    u: jax.Array
    w: jax.Array
    charge: jax.Array
    loss_product: jax.Array
    v: jax.Array
    loss_square: jax.Array


# ----------------------------------------------------------------------------- data and theory


def make_data(key: jax.Array, n: int, *, slope: float = 1.0, noise: float = 0.5,
              dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """x `(n,)` ~ N(0, 1), y = slope · x + noise · N(0, 1) `(n,)`."""
    if n < 2:
        raise ValueError(f"need n >= 2 samples (got {n})")
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (n,), dtype)
    return x, jnp.asarray(slope, dtype) * x + jnp.asarray(noise, dtype) * jax.random.normal(ke, (n,), dtype)


def moments(x: jax.Array, y: jax.Array) -> Moments:
    """Empirical E[x²], E[xy], E[y²] of x, y `(n,)`: the losses below equal the data means exactly."""
    chex.assert_rank([x, y], 1)
    chex.assert_equal_shape([x, y])
    return Moments(jnp.mean(x * x), jnp.mean(x * y), jnp.mean(y * y))


def loss_product(u: jax.Array, w: jax.Array, m: Moments, gamma: jax.Array) -> jax.Array:
    """E[(u w x − y)²] + γ (u² + w²), elementwise over matching shapes of u, w, γ."""
    p = u * w
    return m.xx * p * p - 2 * m.xy * p + m.yy + gamma * (u * u + w * w)


def loss_square(w: jax.Array, m: Moments, gamma: jax.Array) -> jax.Array:
    """E[(w² x − y)²] + γ w², elementwise."""
    q = w * w
    return m.xx * q * q - 2 * m.xy * q + m.yy + gamma * q


def threshold_product(m: Moments) -> jax.Array:
    """γ_c = |E[xy]|: the origin of the product model is stable iff γ > γ_c."""
    return jnp.abs(m.xy)


def threshold_square(m: Moments) -> jax.Array:
    """γ_c = max(2 E[xy], 0): the origin of the talk's model is stable iff γ > γ_c."""
    return jnp.maximum(2 * m.xy, 0)


def solution_product(m: Moments, gamma: jax.Array) -> jax.Array:
    """u w at the minimum: sign(E[xy]) max(|E[xy]| − γ, 0) / E[x²] (shape of γ)."""
    return jnp.sign(m.xy) * jnp.maximum(jnp.abs(m.xy) - gamma, 0) / m.xx


def solution_square(m: Moments, gamma: jax.Array) -> jax.Array:
    """w² at the minimum: max(2 E[xy] − γ, 0) / (2 E[x²]) (shape of γ)."""
    return jnp.maximum(2 * m.xy - gamma, 0) / (2 * m.xx)


def estimate_threshold(gammas: np.ndarray, order: np.ndarray, *, floor: float = 1e-3) -> tuple[float, float]:
    """The γ where the order parameter (|u w| or w², mean over seeds, `(G,)`) vanishes, measured:
    a least-squares line through the points with order > floor (the theory's branch is linear in
    γ), extrapolated to zero. Returns (γ_c, slope); needs >= 2 such points."""
    gammas, order = np.asarray(gammas, np.float64), np.asarray(order, np.float64)
    chex.assert_rank([gammas, order], 1)
    chex.assert_equal_shape([gammas, order])
    keep = order > floor
    if keep.sum() < 2:
        raise ValueError("fewer than 2 points above the floor: no broken-symmetry branch to fit")
    slope, intercept = np.polyfit(gammas[keep], order[keep], 1)
    return float(-intercept / slope), float(slope)


# ----------------------------------------------------------------------------- training


def init_state(key: jax.Array, gammas: jax.Array, num_seeds: int, *, scale: float = 0.5,
               lr: float = 0.05) -> State:
    """u, w, v ~ N(0, scale²) `(G, S)`, the same draws for every γ of a seed (seed s = fold_in(key, s)),
    and fresh optax SGD states. gammas `(G,)`."""
    chex.assert_rank(gammas, 1)
    if num_seeds < 1:
        raise ValueError(f"need num_seeds >= 1 (got {num_seeds})")
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(num_seeds))
    draws = jax.vmap(lambda k: jax.random.normal(k, (3,), gammas.dtype))(keys) * jnp.asarray(scale, gammas.dtype)
    u, w, v = (jnp.broadcast_to(draws[:, i], (gammas.shape[0], num_seeds)) for i in range(3))
    opt = optax.sgd(lr)
    return State(u, w, v, opt.init((u, w)), opt.init(v))


def make_step(m: Moments, gammas: jax.Array, *, lr: float = 0.05, inner_steps: int = 100):
    """`step(state, t) -> (state, Record)` for `run_steps`: `inner_steps` full-batch GD
    steps (optax SGD, rate `lr`) of both models at every (γ, seed), then a record. gammas `(G,)`."""
    chex.assert_rank(gammas, 1)
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be >= 1 (got {inner_steps})")
    opt = optax.sgd(lr)
    g = gammas[:, None]

    def total_product(uw):
        return jnp.sum(loss_product(uw[0], uw[1], m, g))  # runs are independent: sum = per-run grads

    def total_square(v):
        return jnp.sum(loss_square(v, m, g))

    def gd(_, state: State) -> State:
        grad_uw = jax.grad(total_product)((state.u, state.w))
        upd, opt_p = opt.update(grad_uw, state.opt_product, (state.u, state.w))
        u, w = optax.apply_updates((state.u, state.w), upd)
        upd_v, opt_s = opt.update(jax.grad(total_square)(state.v), state.opt_square, state.v)
        return State(u, w, optax.apply_updates(state.v, upd_v), opt_p, opt_s)

    def step(state: State, t: jax.Array) -> tuple[State, Record]:
        del t  # deterministic full-batch GD
        state = jax.lax.fori_loop(0, inner_steps, gd, state)
        record = Record(state.u, state.w, state.u ** 2 - state.w ** 2,
                                loss_product(state.u, state.w, m, g), state.v, loss_square(state.v, m, g))
        return state, record

    return step


# ----------------------------------------------------------------------------- the sweep and its verdicts


@dataclasses.dataclass(frozen=True)
class Config:
    """The γ sweep of `experiments/symmetry_collapse.py`: data x ~ N(0, 1), y = slope x + noise ε
    (n points, PRNG `seed`), `gammas` points of γ on [0, 3] x `seeds` inits of scale `init_scale`,
    `steps` float64 GD steps at rate `lr`, recorded every `every`; a run has settled when its order
    parameter stays within `tol` of the closed form."""

    n: int = 1000
    slope: float = 1.0
    noise: float = 0.5
    gammas: int = 121
    seeds: int = 8
    lr: float = 0.05
    steps: int = 40000
    every: int = 100
    init_scale: float = 0.5
    seed: int = 0
    tol: float = 1e-6

    def __post_init__(self):
        if self.every < 1 or self.steps < self.every or self.steps % self.every:
            raise ValueError(f"steps must be a positive multiple of {self.every} (got {self.steps})")
        if self.seeds < 1 or self.n < 2 or self.lr <= 0 or self.init_scale <= 0 or self.gammas < 2:
            raise ValueError("need seeds >= 1, n >= 2, lr > 0, init_scale > 0, gammas >= 2")

    def gamma_grid(self) -> np.ndarray:
        """The swept γ `(G,)`, float64."""
        return np.linspace(0.0, 3.0, self.gammas)


def simulate(config: Config, *, directory=None, progress: str | None = None) -> tuple[Moments, Record]:
    """Run the sweep (float64, resumable in `directory`); returns the data's moments and the
    trajectory `(steps // every, G, S)`, host arrays."""
    settings = {**dataclasses.asdict(config), "gammas": config.gamma_grid().tolist(), "dtype": "float64"}
    for name in ("steps", "tol"):
        settings.pop(name)
    with jax.enable_x64(True):
        k_data, k_init = jax.random.split(jax.random.key(config.seed))
        m = moments(*make_data(k_data, config.n, slope=config.slope, noise=config.noise, dtype=jnp.float64))
        g = jnp.asarray(config.gamma_grid())
        state = init_state(k_init, g, config.seeds, scale=config.init_scale, lr=config.lr)
        step = make_step(m, g, lr=config.lr, inner_steps=config.every)
        records = config.steps // config.every
        _, traj = run_steps(step, state, records, chunk=max(1, records // 4), directory=directory,
                            settings=settings, progress=progress)
        return Moments(*(np.asarray(x) for x in m)), traj


def settle_step(error: np.ndarray, tol: float, every: int) -> np.ndarray:
    """GD steps until `error` `(T, ...)` (recorded every `every` steps) falls below tol for good;
    NaN where it never does."""
    ok = error < tol
    stays = np.flip(np.cumprod(np.flip(ok, 0), axis=0), 0).astype(bool)  # ok from here to the end
    first = np.argmax(stays, axis=0)
    return np.where(stays.any(axis=0), (first + 1) * every, np.nan)


class Summary(NamedTuple):
    """What a sweep shows. order, theory: per model, the order parameter `(T, G, S)` (|u w|, w²)
    and its closed form `(G,)`; thresholds: per model, the theory's γ_c; balance `(G, S)`:
    | |u| − |w| | at the end; runs and table: per (model, γ, seed) and per (model, γ) columns;
    models: per model, the verdicts (threshold and slope measured against theory, errors, settling)."""

    order: dict[str, np.ndarray]
    theory: dict[str, np.ndarray]
    thresholds: dict[str, float]
    balance: np.ndarray
    runs: dict[str, np.ndarray]
    table: dict[str, np.ndarray]
    models: dict[str, dict[str, Any]]


def summarize(trajectory: Record, config: Config, m: Moments) -> Summary:
    """The theory against a sweep's `trajectory` (`simulate`): pure numpy on host arrays."""
    traj = jax.tree.map(np.asarray, trajectory)
    gammas, tol, every = config.gamma_grid(), config.tol, config.every
    a, b = float(m.xy), float(m.xx)
    with jax.enable_x64(True):  # the closed forms in the sweep's float64
        m64, g64 = Moments(*(jnp.asarray(x, jnp.float64) for x in m)), jnp.asarray(gammas)
        theory = {"product": np.abs(np.asarray(solution_product(m64, g64))),
                  "square": np.asarray(solution_square(m64, g64))}
        thresholds = {"product": float(threshold_product(m64)), "square": float(threshold_square(m64))}
    order = {"product": np.abs(traj.u * traj.w), "square": traj.v ** 2}  # (T, G, S)
    slopes = {"product": -1 / b, "square": -1 / (2 * b)}
    balance = np.abs(np.abs(traj.u[-1]) - np.abs(traj.w[-1]))  # (G, S)
    sign_ok = np.all(np.sign(traj.u[-1] * traj.w[-1])[theory["product"] > 1e-3] == np.sign(a))
    runs = {k: [] for k in ("model", "gamma", "seed", "u", "w", "order", "theory", "abs_error", "balance_gap",
                            "final_loss", "steps_to_tol")}
    table = {k: [] for k in ("model", "gamma", "order_mean", "theory", "max_abs_error", "max_balance_gap",
                             "median_steps_to_tol", "threshold")}
    models = {}
    num_g, seeds = balance.shape
    for name in MODELS:
        err = np.abs(order[name] - theory[name][None, :, None])
        settle = settle_step(err, tol, every)
        product = name == "product"
        final_loss = traj.loss_product[-1] if product else traj.loss_square[-1]
        runs["model"] += [name] * (num_g * seeds)
        runs["gamma"] += list(np.repeat(gammas, seeds))
        runs["seed"] += list(np.tile(np.arange(seeds), num_g))
        runs["u"] += list(traj.u[-1].ravel() if product else np.full(num_g * seeds, np.nan))
        runs["w"] += list(traj.w[-1].ravel() if product else traj.v[-1].ravel())
        runs["order"] += list(order[name][-1].ravel())
        runs["theory"] += list(np.repeat(theory[name], seeds))
        runs["abs_error"] += list(err[-1].ravel())
        runs["balance_gap"] += list(balance.ravel() if product else np.full(num_g * seeds, np.nan))
        runs["final_loss"] += list(final_loss.ravel())
        runs["steps_to_tol"] += list(settle.ravel())
        table["model"] += [name] * num_g
        table["gamma"] += list(gammas)
        table["order_mean"] += list(order[name][-1].mean(axis=1))
        table["theory"] += list(theory[name])
        table["max_abs_error"] += list(err[-1].max(axis=1))
        table["max_balance_gap"] += list(balance.max(axis=1) if product else np.full(num_g, np.nan))
        table["median_steps_to_tol"] += list(np.median(settle, axis=1))
        table["threshold"] += [thresholds[name]] * num_g
        gc = thresholds[name]
        try:
            measured, fitted_slope = estimate_threshold(gammas, order[name][-1].mean(axis=1))
        except ValueError:
            measured, fitted_slope = float("nan"), float("nan")
        far = np.abs(gammas - gc) >= 0.05
        models[name] = {"threshold_theory": gc, "threshold_measured": measured,
                        "threshold_abs_error": abs(measured - gc), "slope_theory": slopes[name],
                        "slope_measured": fitted_slope, "max_abs_error": float(err[-1].max()),
                        "max_abs_error_far_from_threshold": float(err[-1][far].max()) if far.any() else None,
                        "runs_within_tol": int((err[-1] < tol).sum()), "runs": int(err[-1].size),
                        "max_steps_to_tol_far_from_threshold": float(np.nanmax(settle[far])) if far.any() else None}
    models["product"]["max_balance_gap_gamma_positive"] = float(balance[gammas > 0].max()) if (gammas > 0).any() \
        else None
    models["product"]["sign_matches_E_xy"] = bool(sign_ok)
    if gammas[0] == 0:
        charge0 = traj.u[0, 0] ** 2 - traj.w[0, 0] ** 2  # after the first `every` steps
        models["product"]["gamma0_charge_drift_max"] = float(np.abs(traj.charge[-1, 0] - charge0).max())
        models["product"]["gamma0_balance_gap_min"] = float(balance[0].min())
    return Summary(order, theory, thresholds, balance, {k: np.asarray(v) for k, v in runs.items()},
                   {k: np.asarray(v) for k, v in table.items()}, models)
