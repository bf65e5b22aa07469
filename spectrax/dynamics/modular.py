"""CoGO modular addition (Tian, "Composing Global Optimizers to Reasoning Tasks via Algebraic Objects
in Neural Nets", 2024): data, the 2-layer quadratic network, its training loop, the Fourier analysis.

Setup of docs/dynamics.md, Setups. All d² pairs (a, b) -> c = (a + b) mod d (d odd; the paper uses primes), a
seeded 90% train split; one-hot a and b; hidden pre-activation h = W_a e_a + W_b e_b `(hidden,)`;
activation h² (elementwise); output o = W_c h² `(d,)`; no biases. Shapes: W_a, W_b `(hidden, d)`,
W_c `(d, hidden)`. Loss: MSE between the centered output o - mean_c(o) and the centered one-hot
e_c - 1/d, averaged over all (pair, output) entries (torch's `MSELoss()` default). Full batch,
Adam with *coupled* L2 weight decay, `optax.chain(add_decayed_weights(wd), adam(lr))`: the decay
wd·θ is added to the gradient before Adam's moments, so it is normalized with it (not AdamW, whose
decay bypasses the normalization). lr 0.01, hidden 512, wd 5e-5, 10k epochs. Initialization is
PyTorch `nn.Linear`'s default: W_a, W_b as one Linear on the concatenated one-hot [e_a; e_b]
(uniform ±1/√(2d)), W_c uniform ±1/√hidden.

Fourier analysis, ω = 2π/d, frequencies k = 0..d-1 (k and d - k are conjugate):

    A[k, j] = (1/d) Σ_x W_a[j, x] e^{-iωkx}          (likewise B from W_b)
    C[k, j] = (1/d) Σ_c W_c[c, j] e^{+iωkc}          (conjugate sign: c enters with a minus)

so W_a[j, x] = Σ_k A[k, j] e^{iωkx} and W_c[c, j] = Σ_k C[k, j] e^{-iωkc}. The part of the output
that couples a and b is 2 Σ_j W_c[c, j] W_a[j, a] W_b[j, b] = 2 Σ_{k1,k2,k3} r_{k1 k2 k3}
e^{iω(k1 a + k2 b - k3 c)} with r_{k1 k2 k3} = Σ_j A[k1, j] B[k2, j] C[k3, j]; the squares
W_a[j, a]², W_b[j, b]² give modes that do not depend on b (resp. a), and centering over c removes
k3 = 0. The target is e_c - 1/d = (1/d) Σ_{k≠0} e^{iωk(a + b - c)}. The modes are orthogonal on
Z_d³, so an exact solution has 2 r_kkk = 1/d for every k ≠ 0 (and all other modes zero), i.e.

    Σ_{k=1}^{d-1} 2d Re r_kkk = d - 1      (r_sum; one unit per nonzero frequency)

`exact_solution` builds such a network by hand (8 units per frequency pair, the squares cancelled
in ± pairs) and the tests check r_sum on it independently of training. The "order" of frequency
k ∈ {1..(d-1)/2} is the number of hidden units j with |A[k, j]| > 0.05 (|A[k, j]| = |A[d-k, j]|,
so each conjugate pair is counted once); the paper finds GD solutions of order 4 or 6 per frequency.

Measured findings (which run, what held and what did not): docs/dynamics.md, "Findings by module", `modular`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectrax.dynamics.loop import run_steps

__all__ = [
    "Fourier",
    "Pairs",
    "Params",
    "Record",
    "State",
    "accuracy",
    "active_units",
    "all_pairs",
    "apply",
    "centered_targets",
    "decayed_r_sum",
    "dominant_frequency",
    "exact_solution",
    "fourier",
    "frequency_order",
    "init_params",
    "init_state",
    "loss_fn",
    "make_step",
    "num_train",
    "optimizer",
    "order_histogram",
    "r_diagonal",
    "r_sum",
    "run",
    "split_pairs",
]

THRESHOLD = 0.05


class Pairs(NamedTuple):
    """N examples: a `(N,)`, b `(N,)` int32 operands, c `(N,)` int32 = (a + b) mod d."""

    a: jax.Array
    b: jax.Array
    c: jax.Array


class Params(NamedTuple):
    """w_a, w_b `(hidden, d)` input weights of a and b; w_c `(d, hidden)` output weights."""

    w_a: jax.Array
    w_b: jax.Array
    w_c: jax.Array


class Fourier(NamedTuple):
    """a, b, c `(d, hidden)` complex: A, B, C of the module docstring (rows = frequency k)."""

    a: jax.Array
    b: jax.Array
    c: jax.Array


class State(NamedTuple):
    """Training state of one run (or, in `run`, of R runs stacked on a leading axis)."""

    params: Params
    opt_state: Any


class Record(NamedTuple):
    """Per-epoch quantities, taken before that epoch's update (epoch 0 = initialization).

    train_loss, train_acc, test_acc, r_sum: scalars per run (`(T, R)` in a trajectory)."""

    train_loss: jax.Array
    train_acc: jax.Array
    test_acc: jax.Array
    r_sum: jax.Array


# ----------------------------------------------------------------------------- data


def _check_d(d: int) -> None:
    if d < 3 or d % 2 == 0:
        raise ValueError(f"d must be odd and >= 3 (got {d}): the analysis pairs frequency k with d - k")


def all_pairs(d: int) -> Pairs:
    """All d² pairs, a-major: row a * d + b holds (a, b, (a + b) mod d)."""
    _check_d(d)
    a, b = np.divmod(np.arange(d * d), d)
    return Pairs(jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32), jnp.asarray((a + b) % d, jnp.int32))


def num_train(d: int, train_fraction: float = 0.9) -> int:
    """round(train_fraction · d²) training pairs (476 of 529 at d = 23)."""
    return int(round(train_fraction * d * d))


def split_pairs(key: jax.Array, d: int, train_fraction: float = 0.9) -> tuple[Pairs, Pairs]:
    """(train, test): a uniformly random `num_train(d)` of the d² pairs for training, the rest test."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1) (got {train_fraction})")
    pairs = all_pairs(d)
    n = num_train(d, train_fraction)
    if not 0 < n < d * d:
        raise ValueError(f"train_fraction {train_fraction} leaves an empty train or test set at d = {d}")
    order = jax.random.permutation(key, d * d)
    take = lambda idx: Pairs(*(x[idx] for x in pairs))  # noqa: E731
    return take(order[:n]), take(order[n:])


def centered_targets(c: jax.Array, d: int, dtype=jnp.float32) -> jax.Array:
    """`(N, d)`: one-hot(c) - 1/d."""
    return jax.nn.one_hot(c, d, dtype=dtype) - 1.0 / d


# ----------------------------------------------------------------------------- model


def init_params(key: jax.Array, d: int, hidden: int = 512) -> Params:
    """PyTorch `nn.Linear` default: W_a, W_b ~ U(±1/√(2d)) (one Linear on [e_a; e_b]),
    W_c ~ U(±1/√hidden)."""
    _check_d(d)
    ka, kb, kc = jax.random.split(key, 3)
    u = lambda k, shape, bound: jax.random.uniform(k, shape, jnp.float32, -bound, bound)  # noqa: E731
    bound_in, bound_out = 1.0 / float(np.sqrt(2 * d)), 1.0 / float(np.sqrt(hidden))
    return Params(u(ka, (hidden, d), bound_in), u(kb, (hidden, d), bound_in), u(kc, (d, hidden), bound_out))


def apply(params: Params, a: jax.Array, b: jax.Array) -> jax.Array:
    """Raw outputs `(N, d)` = W_c (W_a e_a + W_b e_b)² for operands a, b `(N,)`."""
    chex.assert_rank([params.w_a, params.w_b, params.w_c], 2)
    chex.assert_equal_shape([params.w_a, params.w_b])
    chex.assert_shape(params.w_c, params.w_a.shape[::-1])
    h = params.w_a.T[a] + params.w_b.T[b]  # (N, hidden): W e_x is column x
    return (h * h) @ params.w_c.T


def loss_fn(params: Params, pairs: Pairs, reduction: str = "mean") -> jax.Array:
    """(centered output - centered one-hot)², averaged over (pairs, outputs) ("mean": torch's
    `MSELoss()`, the documented setup) or summed over outputs and averaged over pairs ("sum": the paper's ℓ(z),
    d times larger; under Adam the same run as "mean" with wd / d)."""
    out = apply(params, pairs.a, pairs.b)
    out = out - jnp.mean(out, axis=-1, keepdims=True)
    err = (out - centered_targets(pairs.c, out.shape[-1], out.dtype)) ** 2
    if reduction == "mean":
        return jnp.mean(err)
    if reduction == "sum":
        return jnp.mean(jnp.sum(err, axis=-1))
    raise ValueError(f"reduction must be 'mean' or 'sum' (got {reduction!r})")


def accuracy(params: Params, pairs: Pairs) -> jax.Array:
    """Fraction of pairs whose largest output is at c (centering does not move the argmax)."""
    pred = jnp.argmax(apply(params, pairs.a, pairs.b), axis=-1).astype(pairs.c.dtype)
    return jnp.mean((pred == pairs.c).astype(jnp.float32))


def exact_solution(d: int, hidden: int | None = None, dtype=jnp.float32) -> Params:
    """A hand-built exact solution, independent of training (the check of the normalization).

    δ_{c,a+b} - 1/d = (2/d) Σ_{k=1}^{(d-1)/2} cos(ωk(a + b - c)), and cos(x + y - z) expands into
    four products f(x) g(y) h(z) of cos/sin. Each product f(a) g(b) h(c) is made by two units,
    (W_a, W_b, W_c) = (f, g, s·h/(2d)) and (f, -g, -s·h/(2d)), s = ±1 the sign of the product in
    the expansion: their squares cancel and their cross terms add to (2/d) s·f g h. So 8 units per frequency pair, 4(d - 1) in all; extra
    units (`hidden` larger) are zero. The centered output equals e_c - 1/d exactly, every
    2d Re r_kkk (k ≠ 0) is 1, and every frequency has order 8 (|A[k, j]| = 1/2 on its units).
    """
    _check_d(d)
    need = 4 * (d - 1)
    hidden = need if hidden is None else hidden
    if hidden < need:
        raise ValueError(f"an exact solution needs hidden >= 4 (d - 1) = {need} (got {hidden})")
    x = np.arange(d)
    rows_a, rows_b, cols_c = [], [], []
    for k in range(1, (d - 1) // 2 + 1):
        cos, sin = np.cos(2 * np.pi * k * x / d), np.sin(2 * np.pi * k * x / d)
        # cos(α + β - γ) = cos α cos β cos γ - sin α sin β cos γ + sin α cos β sin γ + cos α sin β sin γ
        for f, g, h, s in ((cos, cos, cos, 1), (sin, sin, cos, -1), (sin, cos, sin, 1), (cos, sin, sin, 1)):
            for sign in (1, -1):
                rows_a.append(f)
                rows_b.append(sign * g)
                cols_c.append(sign * s * h / (2 * d))
    w_a = np.zeros((hidden, d))
    w_b = np.zeros((hidden, d))
    w_c = np.zeros((d, hidden))
    w_a[:need], w_b[:need], w_c[:, :need] = rows_a, rows_b, np.array(cols_c).T
    return Params(*(jnp.asarray(w, dtype) for w in (w_a, w_b, w_c)))


# ----------------------------------------------------------------------------- Fourier analysis


def _dft(d: int, sign: float, dtype) -> jax.Array:
    """`(d, d)` matrix (1/d) e^{sign·iωkx}, rows k, columns x."""
    k = np.arange(d)
    m = np.exp(sign * 2j * np.pi * np.outer(k, k) / d) / d
    return jnp.asarray(m, dtype)


def fourier(params: Params) -> Fourier:
    """A, B, C `(d, hidden)` of the module docstring (complex64, or complex128 from float64)."""
    chex.assert_rank([params.w_a, params.w_b, params.w_c], 2)
    d = params.w_a.shape[1]
    cdtype = jnp.complex128 if params.w_a.dtype == jnp.float64 else jnp.complex64
    minus, plus = _dft(d, -1.0, cdtype), _dft(d, 1.0, cdtype)
    return Fourier(minus @ params.w_a.T.astype(cdtype), minus @ params.w_b.T.astype(cdtype),
                   plus @ params.w_c.astype(cdtype))


def r_diagonal(f: Fourier) -> jax.Array:
    """r_kkk = Σ_j A[k, j] B[k, j] C[k, j], `(d,)` complex."""
    chex.assert_equal_shape([f.a, f.b, f.c])
    return jnp.sum(f.a * f.b * f.c, axis=-1)


def r_sum(params: Params) -> jax.Array:
    """Σ_{k=1}^{d-1} 2d Re r_kkk: d - 1 for an exact solution (k = 0 is removed by centering)."""
    r = r_diagonal(fourier(params))
    d = r.shape[0]
    return 2.0 * d * jnp.sum(jnp.real(r[1:]))


def decayed_r_sum(params: Params, wd: float, reduction: str = "mean") -> jax.Array:
    """The r_sum that weight decay wd predicts for a stationary network with these weights.

    At a stationary point of L + (wd/2)||θ||² the derivative along θ -> λθ vanishes; the output is
    homogeneous of degree 3 in λ, so 3 <∂L/∂o, o> = -wd ||θ||². If the trained network is an
    exact solution scaled so that every 2d Re r_kkk = ρ (o = ρ t, t the centered one-hot), then
    <∂L/∂o, o> = -2 m ρ (1 - ρ) with m = mean t² = (d - 1)/d² ("mean") or (d - 1)/d ("sum"), so
    6 m ρ (1 - ρ) = wd ||θ||² and the prediction is (d - 1) ρ, the root nearest 1. NaN when the
    decay is too strong for any ρ > 0 (the network should then collapse to 0). Scalar.
    """
    d = params.w_a.shape[1]
    m = (d - 1) / d**2 if reduction == "mean" else (d - 1) / d
    norm = sum(jnp.sum(w * w) for w in params)
    disc = 1.0 - 4.0 * wd * norm / (6.0 * m)
    rho = 0.5 * (1.0 + jnp.sqrt(jnp.where(disc >= 0, disc, jnp.nan)))
    return (d - 1) * rho


def frequency_order(f: Fourier, threshold: float = THRESHOLD) -> jax.Array:
    """`((d-1)/2,)` int32: order of frequency k = 1..(d-1)/2, #units with |A[k, j]| > threshold."""
    d = f.a.shape[0]
    return jnp.sum(jnp.abs(f.a[1:(d - 1) // 2 + 1]) > threshold, axis=-1, dtype=jnp.int32)


def order_histogram(orders: np.ndarray, max_order: int | None = None) -> np.ndarray:
    """Counts of each order 0..max_order over all entries of `orders` (any shape)."""
    orders = np.asarray(orders).ravel()
    top = int(orders.max(initial=0)) if max_order is None else max_order
    return np.bincount(np.minimum(orders, top), minlength=top + 1)


def active_units(f: Fourier, threshold: float = THRESHOLD) -> jax.Array:
    """`(hidden,)` bool: units with |A[k, j]| > threshold at some nonzero frequency."""
    return jnp.any(jnp.abs(f.a[1:]) > threshold, axis=0)


def dominant_frequency(f: Fourier) -> jax.Array:
    """`(hidden,)` int32 in 1..(d-1)/2: the frequency pair with the largest |A[k, j]|."""
    d = f.a.shape[0]
    return (1 + jnp.argmax(jnp.abs(f.a[1:(d - 1) // 2 + 1]), axis=0)).astype(jnp.int32)


# ----------------------------------------------------------------------------- training


def optimizer(lr: float | jax.Array, wd: float | jax.Array) -> optax.GradientTransformation:
    """Adam with coupled L2: the update is adam(g + wd·θ) (decay inside the normalization)."""
    return optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))


def init_state(key: jax.Array, d: int, hidden: int = 512) -> State:
    """Initial params (`init_params`) and Adam state (which does not depend on lr or wd)."""
    params = init_params(key, d, hidden)
    return State(params, optimizer(0.0, 0.0).init(params))


def make_step(train: Pairs, test: Pairs, lr: float | jax.Array, wd: float | jax.Array, reduction: str = "mean"):
    """`step(state, t) -> (state, Record)`: one full-batch epoch of one run. Vmap it for seeds."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' (got {reduction!r})")

    def step(state: State, t: jax.Array) -> tuple[State, Record]:
        del t  # full batch: nothing random after initialization
        opt = optimizer(lr, wd)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, train, reduction)
        record = Record(loss, accuracy(state.params, train), accuracy(state.params, test), r_sum(state.params))
        # optax's Adam bias correction raises a Python float to the int32 step count, which strict
        # dtype promotion refuses; standard promotion there gives float32 all the same.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = opt.update(grads, state.opt_state, state.params)
        return State(optax.apply_updates(state.params, updates), opt_state), record

    return step


def _runs(seeds: Sequence[int], d: int, hidden: int, train_fraction: float):
    """Per seed: key -> (split key, init key); stacked `(R, ...)` data and states."""
    splits, states = [], []
    for seed in seeds:
        k_split, k_init = jax.random.split(jax.random.key(seed))
        splits.append(split_pairs(k_split, d, train_fraction))
        states.append(init_state(k_init, d, hidden))
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    return stack([s[0] for s in splits]), stack([s[1] for s in splits]), stack(states)


def run(seeds: Sequence[int], *, d: int = 23, hidden: int = 512, lr: float = 0.01,
        wds: Sequence[float] = (5e-5,), epochs: int = 10_000, train_fraction: float = 0.9, reduction: str = "mean",
        chunk: int = 1000, directory: str | os.PathLike | None = None,
        progress: str | None = None) -> tuple[Params, Record, Pairs, Pairs]:
    """Train every (wd, seed) combination in one vmapped, compiled scan.

    Run index r = w * len(seeds) + s (wd-major). Seed s sets both the train split and the
    initialization (`jax.random.key(seed)` split in two), so runs with the same seed and different
    wd share data and init. Returns final params `(R, ...)`, the trajectory (`Record` of `(T, R)`
    host arrays), and the train / test pairs `(R, N)`. With `directory`, checkpoints via
    `run_steps` after every `chunk` epochs and resumes a run with the same settings.
    """
    if len(seeds) < 1 or len(wds) < 1 or epochs < 1 or hidden < 1 or lr <= 0:
        raise ValueError("need >= 1 seed, >= 1 wd, epochs >= 1, hidden >= 1, lr > 0")
    if any(w < 0 for w in wds):
        raise ValueError(f"weight decays must be >= 0 (got {list(wds)})")
    _check_d(d)
    train, test, state = _runs(list(seeds) * len(wds), d, hidden, train_fraction)
    wd = jnp.repeat(jnp.asarray(wds, jnp.float32), len(seeds))

    def batched(s: State, t: jax.Array) -> tuple[State, Record]:
        one = lambda st, tr, te, w: make_step(tr, te, lr, w, reduction)(st, t)  # noqa: E731
        return jax.vmap(one)(s, train, test, wd)

    settings: Mapping[str, Any] = {"seeds": list(seeds), "d": d, "hidden": hidden, "lr": lr, "wds": list(wds),
                                   "train_fraction": train_fraction, "reduction": reduction, "model": "cogo_modular_v1"}
    final, traj = run_steps(batched, state, epochs, chunk=chunk, directory=directory, settings=settings,
                            progress=progress)
    return final.params, traj, train, test
