"""GaLore against full Adam on a small language model: an MLP over the previous two tokens learns an
order-2 Markov chain whose entropy floor is known exactly.

The setup of docs/dynamics.md, Setups, "GaLore" (Zhao et al., ICML 2024). A token stream over V tokens
is an order-2 Markov chain whose transition table P(x_t | x_{t-2}, x_{t-1}) = softmax(teacher(x_{t-2},
x_{t-1}) / τ) comes from a random teacher MLP (`make_chain`), so the best possible next-token loss is
the mean entropy of the true conditionals at the positions seen (`floor`). The student:

    embed (V, E) -> concat (2E) -> W1 (2E, H) -> gelu -> W2 (H, H) -> gelu -> W_out (H, V),

with biases, trained on next-token cross-entropy by full Adam and by `spectrax.optim.galore` (Adam
base) at several ranks: same seeds, same init, same batches, same steps; the seeds run vmapped under
`loop.run_steps` (resumable). As in the paper, GaLore projects the hidden matrices (W1, W2) and
leaves embeddings, head and biases to full-size Adam (`project="all"` projects every matrix).
Optimizer-state bytes are those of the actual state pytrees (GaLore per projected (m, n) matrix:
min(m, n) r + 2 max(m, n) r floats against Adam's 2 m n).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectrax.dynamics.loop import run_steps
from spectrax.optim import GaLoreState, adam_state_bytes, galore, state_bytes, vmap_axes

__all__ = [
    "Chain",
    "Config",
    "Run",
    "apply",
    "breakdown",
    "floor",
    "init_params",
    "init_seeds",
    "loss_fn",
    "make_chain",
    "make_step",
    "optimizer",
    "projected",
    "sample_streams",
    "simulate",
    "summarize",
    "train",
]


@dataclasses.dataclass(frozen=True)
class Config:
    """`experiments/galore_lm.py`: `steps` per run, `seeds` vmapped, base PRNG `seed`; GaLore at
    `ranks`; V = `vocab`, E = `embed`, H = `hidden`; `batch` streams of `length` tokens; teacher
    temperature; Adam's `lr`, GaLore's base `galore_lr`, α = `scale`, T = `gap`; `project`:
    "hidden" (W1, W2) or "all"; `chunk` steps per compiled chunk and checkpoint."""

    steps: int = 1000
    seeds: int = 2
    seed: int = 0
    ranks: tuple[int, ...] = (4, 8, 16)
    vocab: int = 64
    embed: int = 32
    hidden: int = 256
    batch: int = 16
    length: int = 34
    temperature: float = 1.0
    lr: float = 3e-3
    galore_lr: float = 1e-2
    scale: float = 0.25
    gap: int = 200
    project: str = "hidden"
    chunk: int = 250

    def __post_init__(self):
        object.__setattr__(self, "ranks", tuple(int(r) for r in self.ranks))
        if self.steps < 1 or self.seeds < 1 or any(r < 1 for r in self.ranks):
            raise ValueError("steps, seeds and every rank must be >= 1")
        if self.length < 3 or self.vocab < 2:
            raise ValueError("length must be >= 3 and vocab >= 2")
        if self.project not in ("hidden", "all"):
            raise ValueError(f"project must be 'hidden' or 'all' (got {self.project!r})")


EVAL_KEY = 2**30  # fold_in index of the held-out batch, far from any training step


class Chain(NamedTuple):
    """Order-2 Markov chain over V tokens: logits `(V, V, V)` = log P(next | x_{t-2}, x_{t-1}),
    entropy `(V, V)` of each conditional (nats)."""

    logits: jax.Array
    entropy: jax.Array


def _mlp_init(key: jax.Array, vocab: int, embed: int, hidden: int, scale: float = 1.0) -> dict:
    ke, k1, k2, k3 = jax.random.split(key, 4)
    normal = lambda k, shape, fan_in: scale * jax.random.normal(k, shape) / math.sqrt(fan_in)  # noqa: E731
    return {"embed": jax.random.normal(ke, (vocab, embed)),
            "w1": normal(k1, (2 * embed, hidden), 2 * embed), "b1": jnp.zeros((hidden,)),
            "w2": normal(k2, (hidden, hidden), hidden), "b2": jnp.zeros((hidden,)),
            "w_out": normal(k3, (hidden, vocab), hidden), "b_out": jnp.zeros((vocab,))}


def init_params(key: jax.Array, vocab: int, embed: int, hidden: int) -> dict:
    """Student parameters: embed `(V, E)`, w1 `(2E, H)`, w2 `(H, H)`, w_out `(H, V)`, biases."""
    return _mlp_init(key, vocab, embed, hidden)


def apply(params: dict, context: jax.Array) -> jax.Array:
    """Next-token logits `(..., V)` from the two previous tokens `context` `(..., 2)` int32."""
    x = params["embed"][context]  # (..., 2, E)
    x = x.reshape(*x.shape[:-2], -1)
    h = jax.nn.gelu(x @ params["w1"] + params["b1"])
    h = jax.nn.gelu(h @ params["w2"] + params["b2"])
    return h @ params["w_out"] + params["b_out"]


@functools.partial(jax.jit, static_argnums=1)
def make_chain(key: jax.Array, vocab: int, *, temperature: float = 1.0) -> Chain:
    """The teacher's transition table: a random MLP (E = 16, H = 64, wider init) on every pair."""
    teacher = _mlp_init(key, vocab, 16, 64, scale=2.0)
    pairs = jnp.stack(jnp.meshgrid(jnp.arange(vocab), jnp.arange(vocab), indexing="ij"), -1)  # (V, V, 2)
    logits = jax.nn.log_softmax(apply(teacher, pairs) / temperature, axis=-1)
    entropy = -jnp.sum(jnp.exp(logits) * logits, axis=-1)
    return Chain(logits, entropy)


def sample_streams(key: jax.Array, chain: Chain, batch: int, length: int) -> jax.Array:
    """`(batch, length)` int32 token streams: two uniform start tokens, then the chain."""
    vocab = chain.logits.shape[0]
    k0, k1 = jax.random.split(key)
    start = jax.random.randint(k0, (batch, 2), 0, vocab, dtype=jnp.int32)

    def step(prev, k):
        nxt = jax.random.categorical(k, chain.logits[prev[:, 0], prev[:, 1]]).astype(jnp.int32)
        return jnp.stack([prev[:, 1], nxt], axis=1), nxt

    _, rest = jax.lax.scan(step, start, jax.random.split(k1, length - 2))
    return jnp.concatenate([start, rest.T], axis=1)


def loss_fn(params: dict, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over positions 2..L-1 of `tokens` `(B, L)`."""
    context = jnp.stack([tokens[:, :-2], tokens[:, 1:-1]], axis=-1)  # (B, L-2, 2)
    logp = jax.nn.log_softmax(apply(params, context), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 2:, None], axis=-1))


def floor(chain: Chain, tokens: jax.Array) -> jax.Array:
    """The Bayes loss of the same positions: mean entropy of the true conditionals."""
    return jnp.mean(chain.entropy[tokens[:, :-2], tokens[:, 1:-1]])


@functools.partial(jax.jit, static_argnums=(3, 4))
def _evaluate(params: dict, data_keys: jax.Array, chain: Chain, batch: int, length: int):
    """Held-out loss and its entropy floor per seed `(S,)`, on `batch` fresh streams per seed."""
    def one(p, key):
        tokens = sample_streams(jax.random.fold_in(key, EVAL_KEY), chain, batch, length)
        return loss_fn(p, tokens), floor(chain, tokens)

    return jax.vmap(one)(params, data_keys)


def projected(config: Config) -> tuple[str, ...]:
    """The matrices GaLore projects: W1, W2 (the paper's choice) or every matrix."""
    return ("w1", "w2") if config.project == "hidden" else ("embed", "w1", "w2", "w_out")


def optimizer(rank: int | None, config: Config) -> optax.GradientTransformation:
    """Full Adam (rank None) or GaLore(Adam) at `rank` (`spectrax.optim.galore`) on `projected`."""
    if rank is None:
        return optax.adam(config.lr)
    project = (lambda p: {k: k in ("w1", "w2") for k in p}) if config.project == "hidden" else None
    return galore(rank, base=optax.adam(config.galore_lr), update_proj_gap=config.gap, scale=config.scale,
                  mask=project)


def breakdown(state, projected: Sequence[str]) -> dict[str, int]:
    """Bytes of an Adam or GaLore-Adam state (unbatched) by part: Adam moments of the matrices
    GaLore projects (low-rank under GaLore), moments of everything else, projectors, counts."""
    projectors = state_bytes(state.projectors) if isinstance(state, GaLoreState) else 0
    adam = (state.base_state if isinstance(state, GaLoreState) else state)[0]
    mats = 2 * state_bytes({k: v for k, v in adam.mu.items() if k in projected})
    other = 2 * state_bytes({k: v for k, v in adam.mu.items() if k not in projected})
    return {"projected_moments": mats, "other_moments": other, "projectors": projectors,
            "counts": state_bytes(state) - mats - other - projectors}


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def init_seeds(seeds: jax.Array, base_seed: int, vocab: int, embed: int, hidden: int):
    """Per seed s (`seeds` `(S,)` int32): key(1000 base_seed + s) splits into the init key and the
    data key. Returns (params with a leading `(S,)` axis, data keys `(S,)`)."""
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(base_seed * 1000 + s)))(seeds)
    return jax.vmap(lambda k: init_params(k, vocab, embed, hidden))(keys[:, 0]), keys[:, 1]


class Run(NamedTuple):
    """One optimizer's run over the seeds: rank (None: full Adam); trajectory {loss, floor}
    `(steps, S)`; eval_loss, eval_floor `(S,)` on held-out streams; state_bytes and adam_bytes per
    seed; parts: state bytes by part (`breakdown`); seconds of training."""

    rank: int | None
    trajectory: dict[str, np.ndarray]
    eval_loss: np.ndarray
    eval_floor: np.ndarray
    state_bytes: int
    adam_bytes: int
    parts: dict[str, int]
    seconds: float


def make_step(opt: optax.GradientTransformation, chain: Chain, data_keys: jax.Array, axes, config: Config):
    """`step((params, opt_state), t) -> (state, {loss, floor})` for `loop.run_steps`: one step of every
    seed (vmapped; `axes`: the optimizer state's vmap axes), seed s on a fresh batch from
    `fold_in(data_keys[s], t)`."""
    def seed_step(p, s, key, t):
        tokens = sample_streams(jax.random.fold_in(key, t), chain, config.batch, config.length)
        loss, grads = jax.value_and_grad(loss_fn)(p, tokens)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, {"loss": loss, "floor": floor(chain, tokens)}

    batched = jax.vmap(seed_step, in_axes=(0, axes, 0, None), out_axes=(0, axes, 0))

    def step(state, t):
        p, s = state
        p, s, record = batched(p, s, data_keys, t)
        return (p, s), record

    return step


def train(name: str, rank: int | None, chain: Chain, params: dict, data_keys: jax.Array, config: Config, *,
          directory=None, progress: bool = False) -> Run:
    """One optimizer from `params` (leading seed axis `(S,)`), all seeds vmapped, resumable in
    `directory`; then the held-out loss on 4x the batch."""
    start = time.perf_counter()
    opt = optimizer(rank, config)
    one = jax.eval_shape(lambda: init_params(jax.random.key(0), config.vocab, config.embed, config.hidden))
    single_state = jax.eval_shape(opt.init, one)
    axes = vmap_axes(single_state)
    opt_state = jax.vmap(opt.init, out_axes=axes)(params)
    settings = {"run": name, "rank": rank, **{k: v for k, v in dataclasses.asdict(config).items() if k != "ranks"}}
    # optax's Adam raises a float to its int32 count, which strict dtype promotion refuses.
    with jax.numpy_dtype_promotion("standard"):
        (params, _), traj = run_steps(make_step(opt, chain, data_keys, axes, config), (params, opt_state),
                                      config.steps, chunk=config.chunk, directory=directory, settings=settings,
                                      progress=name if progress else None)
        eval_loss, eval_floor = _evaluate(params, data_keys, chain, 4 * config.batch, config.length)
    return Run(rank, traj, np.asarray(eval_loss), np.asarray(eval_floor), state_bytes(single_state),
               adam_state_bytes(one), breakdown(single_state, projected(config)), time.perf_counter() - start)


def simulate(config: Config, *, directory=None, progress: bool = False) -> tuple[Chain, dict[str, Run]]:
    """The chain and every optimizer's run ("adam", then "galore_r<rank>" per rank), each from the
    same init and on the same batches, seed by seed; with `directory`, run `name` checkpoints in
    `directory/name` and resumes."""
    chain = make_chain(jax.random.key(10_000 + config.seed), config.vocab, temperature=config.temperature)
    params, data_keys = init_seeds(jnp.arange(config.seeds, dtype=jnp.int32), config.seed, config.vocab,
                                   config.embed, config.hidden)
    runs = {}
    for name, rank in [("adam", None)] + [(f"galore_r{r}", r) for r in config.ranks]:
        runs[name] = train(name, rank, chain, params, data_keys, config, progress=progress,
                           directory=None if directory is None else os.path.join(os.fspath(directory), name))
    return chain, runs


def summarize(runs: dict[str, Run], config: Config) -> dict[str, list]:
    """One row per run: state bytes (and against Adam's), by part, the last 10% of the training
    loss, the held-out loss (mean, std), its entropy floor and excess over it (and against Adam's),
    and the held-out loss minus Adam's paired by seed (same init and batches: the shared noise cancels)."""
    tail = max(1, config.steps // 10)
    summary = {"run": [], "rank": [], "state_bytes": [], "state_vs_adam": [], "projected_moments_bytes": [],
               "projectors_bytes": [], "other_state_bytes": [], "train_loss_last10pct": [],
               "eval_loss_mean": [], "eval_loss_std": [], "eval_floor": [], "eval_excess_mean": [],
               "excess_vs_adam": [], "paired_diff_vs_adam_mean": [], "paired_diff_vs_adam_std": [],
               "seconds": []}
    adam = runs["adam"]
    adam_excess = float(np.mean(adam.eval_loss - adam.eval_floor))
    for name, res in runs.items():
        excess = res.eval_loss - res.eval_floor
        paired = res.eval_loss - adam.eval_loss
        for key, value in (("run", name), ("rank", res.rank if res.rank is not None else "full"),
                           ("state_bytes", res.state_bytes), ("state_vs_adam", res.state_bytes / res.adam_bytes),
                           ("projected_moments_bytes", res.parts["projected_moments"]),
                           ("projectors_bytes", res.parts["projectors"]),
                           ("other_state_bytes", res.parts["other_moments"] + res.parts["counts"]),
                           ("train_loss_last10pct", float(np.mean(res.trajectory["loss"][-tail:]))),
                           ("eval_loss_mean", float(np.mean(res.eval_loss))),
                           ("eval_loss_std", float(np.std(res.eval_loss))),
                           ("eval_floor", float(np.mean(res.eval_floor))), ("eval_excess_mean", float(np.mean(excess))),
                           ("excess_vs_adam", float(np.mean(excess)) / adam_excess),
                           ("paired_diff_vs_adam_mean", float(np.mean(paired))),
                           ("paired_diff_vs_adam_std", float(np.std(paired))), ("seconds", res.seconds)):
            summary[key].append(value)
    return summary
