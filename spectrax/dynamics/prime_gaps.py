"""Prime gaps (docs/dynamics.md, Setups, the prime-gap project): a transformer that cannot use its attention, and one that can.

The source trains a pre-LN transformer encoder (PyTorch `nn.TransformerEncoderLayer`,
`norm_first=True`, GELU, MLP width 4E) to predict the prime gap g_n = p_{n+1} - p_n (z-scored)
from the index n alone, fed as ONE token: a learned `nn.Embedding` table row for n (init
N(0, 0.02)) or the fixed sinusoidal encoding of n; an MLP head E -> E/2 -> E/4 -> 1; MSE; AdamW
(lr 1e-4, weight decay 0.01, global-norm clipping at 5; a cosine decay to 1e-6, or, in the
logged Plan A run, an "online evolution" of the lr). It trains on all 10^6 gaps (no held-out
split) and reports its MAE on the last 1000 of them, i.e. on training data. It then reads
low-rank "structure" off the top-left 256 x 256 block of the concatenated `in_proj_weight`s,
which is exactly layer 0's W_Q.

The fact this module demonstrates: with one token per sequence the softmax over keys is over a
single key and equals 1 whatever the logit, so d(attention)/d(logit) = p(1 - p) = 0 and the
gradients of W_Q, W_K and their biases are exactly zero, at every step and in every layer. The
attention output is W_O (W_V x + b_V) + b_O: a plain MLP-like map. Under AdamW a parameter whose
gradient is always zero keeps zero Adam moments, so its update is the decoupled decay alone:

    W_Q(t) = W_Q(0) * prod_{s < t} (1 - lr_s * wd)        (exactly, up to float rounding)

and every scale-free statistic of W_Q (effective rank, stable rank, s_1/mean(s), the QK kernel's
spectrum shape) is the initialization's. Any "structure" in W_Q of the single-token model is the
random initialization shrunk by weight decay. In the multi-token variant (`window = w`: the
tokens are the previous w z-scored gaps, embedded by a learned projection, plus a position
encoding; the last token's output predicts the next gap) the softmax has w keys, W_Q and W_K get
nonzero gradients and move away from their decayed initialization. (The key bias b_K gets no
gradient in any softmax attention: q . b_K shifts all of a query's logits equally.)

Model (pure `jnp`, canonical `[out, in]` orientation, heads first, layers stacked `(L, ...)`):
E hidden, H heads, D = E / H head dim, F MLP width, T tokens per sequence (1 or w), L layers.
Initialization follows PyTorch's defaults for the source's modules: W_Q, W_K, W_V xavier-uniform
over the fused `(3E, E)` matrix, attention biases 0, W_O and MLP/head linears U(+-1/sqrt(fan_in))
(biases too, except W_O's, which is 0), LayerNorm 1/0 (eps 1e-5). Dropout (0.1 in the source) is
left out: it changes neither the zero-gradient fact nor the decay identity.

Data: the first N primes from a numpy sieve of Eratosthenes, G = N - 1 gaps, a seeded random
train/test split of the gap indices n >= w (the same for both variants), targets z-scored with the
training split's mean and std. Memorizing a learned table row per index is the only way the
single-token learned model can fit the training gaps; it cannot generalize to held-out indices,
whose rows are never trained (only decayed): compare train and test R^2 with the log-trend
baseline g ~ a + b ln p_n (the prime number theorem's mean gap).

Measured findings (which run, what held and what did not): docs/dynamics.md, "Findings by module", `prime_gaps`.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectrax import spectral as sp
from spectrax.models.layers import attention, dense_mlp, layer_norm

__all__ = [
    "SOURCE_REFERENCE_DRAWS",
    "source_ks",
    "ATTENTION_QK",
    "Config",
    "Data",
    "State",
    "apply",
    "attention_entropy",
    "decay_factors",
    "evaluate",
    "excess_change",
    "first_primes",
    "gradient_magnitudes",
    "init_params",
    "inputs",
    "log_trend_baseline",
    "loss_fn",
    "make_data",
    "make_step",
    "optimizer",
    "prime_gaps",
    "qk_kernel_erank",
    "sinusoidal_encoding",
    "weight_matrices",
]

ATTENTION_QK = ("q", "k", "q_bias", "k_bias")  # the parameters a single token cannot train
_LN_EPS = 1e-5
_EMBED_STD = 0.02  # the source's nn.init.normal_(std=0.02) of its index table


# ----------------------------------------------------------------------------- data


def first_primes(n: int) -> np.ndarray:
    """The first n primes, `(n,)` int64, by a sieve of Eratosthenes up to Rosser's bound
    p_n < n (ln n + ln ln n) (n >= 6)."""
    if n < 1:
        raise ValueError(f"need n >= 1 primes, got {n}")
    limit = 15 if n < 6 else int(n * (math.log(n) + math.log(math.log(n)))) + 1
    sieve = np.ones(limit + 1, dtype=bool)
    sieve[:2] = False
    for p in range(2, math.isqrt(limit) + 1):
        if sieve[p]:
            sieve[p * p::p] = False
    primes = np.flatnonzero(sieve)
    return primes[:n].astype(np.int64)


def prime_gaps(num_primes: int) -> np.ndarray:
    """g_n = p_{n+1} - p_n for the first `num_primes` primes, `(num_primes - 1,)` int64."""
    if num_primes < 2:
        raise ValueError(f"need at least 2 primes for a gap, got {num_primes}")
    return np.diff(first_primes(num_primes))


class Data(NamedTuple):
    """The gap sequence and its split. G = number of gaps, w = the window (history) length.

    gaps `(G,)` int64 raw g_n (host numpy); primes `(G,)` int64 p_n (the gap's left prime);
    target `(G,)` float32 z-scored g_n (training mean/std); train `(G_train,)` (ascending),
    test `(G_test,)` (random order) int32 gap indices n, all >= w; mean, std: the z-scoring
    constants (Python floats)."""

    gaps: np.ndarray
    primes: np.ndarray
    target: jax.Array
    train: jax.Array
    test: jax.Array
    mean: float
    std: float


def make_data(num_primes: int, *, window: int = 16, test_fraction: float = 0.1, seed: int = 0) -> Data:
    """Gaps of the first `num_primes` primes, split at random over the indices n >= window (so the
    single-token and window variants train and test on the same gaps)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    primes = first_primes(num_primes)
    gaps = np.diff(primes)
    candidates = np.arange(window, gaps.shape[0])
    num_test = round(test_fraction * candidates.shape[0])
    if num_test < 1 or num_test >= candidates.shape[0]:
        raise ValueError(f"{num_primes} primes with window {window} leave too few gaps to split")
    order = np.random.default_rng(seed).permutation(candidates)
    # test stays in random order, so any prefix of it (the in-loop probe) is a random sample
    test, train = order[:num_test], np.sort(order[num_test:])
    mean, std = float(gaps[train].mean()), float(gaps[train].std())
    return Data(gaps=gaps, primes=primes[:-1], target=jnp.asarray((gaps - mean) / std, jnp.float32),
                train=jnp.asarray(train, jnp.int32), test=jnp.asarray(test, jnp.int32), mean=mean, std=std)


def log_trend_baseline(data: Data) -> dict[str, float]:
    """R^2 on train and test of the least-squares fit g_n ~ a + b ln p_n on the training split:
    what the index alone predicts without memorizing (the mean gap near p is ~ ln p)."""
    x = np.log(data.primes.astype(np.float64))
    y = data.gaps.astype(np.float64)
    train, test = np.asarray(data.train), np.asarray(data.test)
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(design[train], y[train], rcond=None)
    pred = design @ coef
    mean = y[train].mean()

    def r2(idx):
        return float(1.0 - np.mean((y[idx] - pred[idx]) ** 2) / np.mean((y[idx] - mean) ** 2))

    return {"train_r2": r2(train), "test_r2": r2(test), "intercept": float(coef[0]), "slope": float(coef[1])}


def sinusoidal_encoding(position: jax.Array, width: int) -> jax.Array:
    """The source's fixed encoding: `(...,)` integer positions -> `(..., width)` float32 with
    sin(n w_i) in the even and cos(n w_i) in the odd columns, w_i = 10000^(-2i / width)."""
    if width % 2:
        raise ValueError(f"sinusoidal encoding needs an even width, got {width}")
    freq = jnp.exp(jnp.arange(0, width, 2, dtype=jnp.float32) * jnp.float32(-math.log(10000.0) / width))
    angle = position.astype(jnp.float32)[..., None] * freq
    return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(*angle.shape[:-1], width)


# ----------------------------------------------------------------------------- model


class Config(NamedTuple):
    """Static model settings (hashable). window = 0: one token per sequence, the index n
    (the source's model); window = w >= 1: the previous w gaps as w tokens.
    encoding: "learned" (a table, N(0, 0.02): over indices for window 0, over positions else)
    or "sinusoidal" (fixed). num_index: table rows for the learned index embedding (>= G)."""

    num_layers: int = 2
    width: int = 64
    heads: int = 4
    mlp: int = 256
    encoding: str = "learned"
    window: int = 0
    num_index: int = 0

    @property
    def tokens(self) -> int:
        return max(self.window, 1)

    def check(self) -> Config:
        if self.encoding not in ("learned", "sinusoidal"):
            raise ValueError(f"encoding must be 'learned' or 'sinusoidal', got {self.encoding!r}")
        if self.width % self.heads or self.width % 4 or self.width % 2:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads} and by 4")
        if self.num_layers < 1 or self.window < 0:
            raise ValueError("need num_layers >= 1 and window >= 0")
        if self.window == 0 and self.encoding == "learned" and self.num_index < 1:
            raise ValueError("a learned index embedding needs num_index >= 1 (the number of gaps)")
        return self


@functools.partial(jax.jit, static_argnames=("cfg",))
def init_params(key: jax.Array, cfg: Config) -> dict[str, Any]:
    """PyTorch's initialization of the source's modules (see the module docstring).

    Returns `{"embed": ..., "layers": {name: (L, ...)}, "head": ...}` with per layer
    q, k, v, o `(L, H, D, E)` (o is W_O transposed per head), q_bias, k_bias, v_bias `(L, H, D)`,
    o_bias `(L, E)`, ln1/ln2 scale and bias `(L, E)`, up `(L, F, E)`, up_bias `(L, F)`,
    down `(L, E, F)`, down_bias `(L, E)`. embed: `table (num_index, E)` (learned, window 0),
    `w_in, b_in (E,)` and `pos (w, E)` if learned (window w), nothing more for sinusoidal."""
    cfg.check()
    L, E, H, F = cfg.num_layers, cfg.width, cfg.heads, cfg.mlp
    D = E // H
    xavier = math.sqrt(6.0 / (3 * E + E))  # over the fused (3E, E) in_proj_weight
    # (group, name, shape, bound) of every U(-bound, bound) parameter, drawn in ONE uniform call:
    # a separate threefry draw per array costs seconds of compile for nothing.
    uniform = [("layers", n, (L, H, D, E), xavier) for n in "qkv"] + [
        ("layers", "o", (L, H, D, E), 1 / math.sqrt(E)),
        ("layers", "up", (L, F, E), 1 / math.sqrt(E)), ("layers", "up_bias", (L, F), 1 / math.sqrt(E)),
        ("layers", "down", (L, E, F), 1 / math.sqrt(F)), ("layers", "down_bias", (L, E), 1 / math.sqrt(F))]
    dims = (E, E // 2, E // 4, 1)
    for i, (n_in, n_out) in enumerate(itertools.pairwise(dims)):
        uniform += [("head", f"w{i}", (n_out, n_in), 1 / math.sqrt(n_in)), ("head", f"b{i}", (n_out,), 1 / math.sqrt(n_in))]
    if cfg.window > 0:  # nn.Linear(1, E): fan_in 1
        uniform += [("embed", "w_in", (E,), 1.0), ("embed", "b_in", (E,), 1.0)]
    k_uniform, k_normal = jax.random.split(key)
    sizes = [math.prod(shape) for _, _, shape, _ in uniform]
    flat = jax.random.uniform(k_uniform, (sum(sizes),), jnp.float32, minval=-1.0, maxval=1.0)
    parts = jnp.split(flat, np.cumsum(sizes)[:-1].tolist())
    tree: dict[str, dict[str, jax.Array]] = {"embed": {}, "layers": {}, "head": {}}
    for (group, name, shape, bound), part in zip(uniform, parts):
        tree[group][name] = part.reshape(shape) * bound
    layers, head, embed = tree["layers"], tree["head"], tree["embed"]
    for name, shape in (("q_bias", (L, H, D)), ("k_bias", (L, H, D)), ("v_bias", (L, H, D)), ("o_bias", (L, E)),
                        ("ln1_bias", (L, E)), ("ln2_bias", (L, E))):
        layers[name] = jnp.zeros(shape, jnp.float32)
    layers["ln1_scale"] = jnp.ones((L, E), jnp.float32)
    layers["ln2_scale"] = jnp.ones((L, E), jnp.float32)
    if cfg.encoding == "learned":
        rows = cfg.num_index if cfg.window == 0 else cfg.window
        embed["table" if cfg.window == 0 else "pos"] = jax.random.normal(k_normal, (rows, E), jnp.float32) * _EMBED_STD
    return {"embed": embed, "layers": layers, "head": head}


def inputs(data: Data, idx: jax.Array, cfg: Config) -> jax.Array:
    """Model inputs for gap indices `idx (B,)`: the indices themselves `(B,)` int32 (window 0) or
    the previous w z-scored gaps `(B, w)` float32, oldest first."""
    return _inputs(data.target, idx, cfg)


def _inputs(target, idx, cfg: Config):
    if cfg.window == 0:
        return idx
    return target[idx[:, None] + jnp.arange(-cfg.window, 0, dtype=jnp.int32)]


def _embed(params, x, cfg: Config):
    E = cfg.width
    if cfg.window == 0:
        tok = params["embed"]["table"][x] if cfg.encoding == "learned" else sinusoidal_encoding(x, E)
        return tok[:, None, :]  # (B, 1, E)
    e = params["embed"]
    pos = e["pos"] if cfg.encoding == "learned" else sinusoidal_encoding(jnp.arange(cfg.window, dtype=jnp.int32), E)
    return x[..., None] * e["w_in"] + e["b_in"] + pos


_ATTENTION = ("q", "k", "v", "o", "q_bias", "k_bias", "v_bias", "o_bias")


def _block(x, layer):
    """One pre-LN encoder layer on `(B, T, E)` (spectrax.models' blocks, no mask, no rotary);
    returns it and the attention `(B, H, T, T)`."""
    T, D = x.shape[1], layer["q"].shape[1]
    no_rotary = jnp.zeros((T, 0), x.dtype)
    h = layer_norm(x, layer["ln1_scale"], layer["ln1_bias"], _LN_EPS)
    out, internals = attention(h, {name: layer[name] for name in _ATTENTION}, no_rotary, no_rotary,
                               jnp.ones((T, T), bool), scale=D**-0.5, eps=_LN_EPS)
    x = x + out
    h = layer_norm(x, layer["ln2_scale"], layer["ln2_bias"], _LN_EPS)
    mlp = {name: layer[name] for name in ("up", "up_bias", "down", "down_bias")}
    return x + dense_mlp(h, mlp, "gelu"), internals["probs"]


@functools.partial(jax.jit, static_argnames=("cfg",))
def apply(params: dict[str, Any], x: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
    """Predicted z-scored gaps `(B,)` and the attention probabilities `(L, B, H, T, T)`.

    x: `(B,)` int32 indices (window 0) or `(B, w)` float32 gap histories (`inputs`). The last
    token's output feeds the head (the only token when window is 0); no final LayerNorm, as
    `nn.TransformerEncoder(norm=None)`."""
    chex.assert_rank(x, 1 if cfg.window == 0 else 2)
    h, attn = jax.lax.scan(lambda c, layer: _block(c, layer), _embed(params, x, cfg), params["layers"])
    y = h[:, -1, :]
    head = params["head"]
    y = jax.nn.gelu(y @ head["w0"].T + head["b0"], approximate=False)
    y = jax.nn.gelu(y @ head["w1"].T + head["b1"], approximate=False)
    return (y @ head["w2"].T + head["b2"])[:, 0], attn


def loss_fn(params: dict[str, Any], x: jax.Array, y: jax.Array, cfg: Config) -> jax.Array:
    """Mean squared error of the z-scored gaps `y (B,)`."""
    return jnp.mean(jnp.square(apply(params, x, cfg)[0] - y))


def _row_entropy(attn: jax.Array) -> jax.Array:
    """Entropy in nats of each attention row: `(..., T)` -> `(...)`."""
    return -jnp.sum(attn * jnp.log(jnp.where(attn > 0, attn, 1.0)), axis=-1)


def attention_entropy(attn: jax.Array) -> jax.Array:
    """Mean (over layers, batch, heads, queries) entropy in nats of `(L, B, H, T, T)` attention;
    ln T is uniform attention, 0 a single key (always the case at T = 1)."""
    return jnp.mean(_row_entropy(attn))


@functools.partial(jax.jit, static_argnames=("cfg",))
def gradient_magnitudes(params: dict[str, Any], x: jax.Array, y: jax.Array, cfg: Config) -> dict[str, jax.Array]:
    """`{name: max |dL/dparam|}` over every layer parameter (all layers) and the embedding."""
    grads = jax.grad(loss_fn)(params, x, y, cfg)
    out = {name: jnp.max(jnp.abs(g)) for name, g in grads["layers"].items()}
    out.update({f"embed.{name}": jnp.max(jnp.abs(g)) for name, g in grads["embed"].items()})
    return out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _batch_eval(params, target, idx, cfg):
    pred, attn = apply(params, _inputs(target, idx, cfg), cfg)
    return jnp.square(pred - target[idx]), jnp.mean(_row_entropy(attn), axis=(0, 2, 3))  # (B,) per sample


def evaluate(params: dict[str, Any], data: Data, idx: jax.Array, cfg: Config, *,
             batch_size: int = 1024) -> dict[str, float]:
    """`{"mse", "entropy"}` over gap indices `idx (n,)`: the MSE of the z-scored gaps and the mean
    attention entropy (nats, as `attention_entropy`). Runs in fixed batches of `batch_size` (the
    last padded), so one compiled program serves every index set."""
    idx = np.asarray(idx, np.int32)
    n = idx.shape[0]
    padded = np.concatenate([idx, np.full((-n) % batch_size, idx[0], np.int32)]).reshape(-1, batch_size)
    errs, ents = zip(*(_batch_eval(params, data.target, jnp.asarray(chunk), cfg) for chunk in padded))
    err = np.concatenate([np.asarray(e, np.float64) for e in errs])[:n]
    ent = np.concatenate([np.asarray(e, np.float64) for e in ents])[:n]
    return {"mse": float(err.mean()), "entropy": float(ent.mean())}


# ----------------------------------------------------------------------------- training


def optimizer(lr: float, weight_decay: float, steps: int, *, final_lr_ratio: float = 0.01,
              clip: float = 5.0) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The source's optimizer: global-norm clipping then AdamW (decoupled decay on every
    parameter) with a cosine decay from `lr` to `lr * final_lr_ratio` over `steps`.
    Returns `(optimizer, schedule)`; update t (0-based) uses `schedule(t)`."""
    cosine = optax.cosine_decay_schedule(lr, max(steps, 1), alpha=final_lr_ratio)
    tx = optax.chain(optax.clip_by_global_norm(clip), optax.adamw(cosine, weight_decay=weight_decay))

    # optax mixes Python floats with the int32 step count (Adam's bias correction, the schedule),
    # which strict dtype promotion (the test suite's setting) refuses; the results are float32
    # either way, so both run under standard promotion.
    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    def schedule(count):
        with jax.numpy_dtype_promotion("standard"):
            return jnp.asarray(cosine(count), jnp.float32)

    return optax.GradientTransformation(tx.init, update), schedule


class State(NamedTuple):
    """params, optax state, and `decay` = prod_{s<t} (1 - lr_s wd) in float32 (scalar)."""

    params: Any
    opt_state: Any
    decay: jax.Array


def excess_change(w: jax.Array, w0: jax.Array, decay: jax.Array) -> jax.Array:
    """||W(t) - decay W(0)||_F / ||W(0)||_F: the change that weight decay does not explain."""
    return jnp.linalg.norm((w - decay * w0).reshape(-1)) / jnp.linalg.norm(w0.reshape(-1))


def make_step(data: Data, cfg: Config, opt: optax.GradientTransformation, schedule: optax.Schedule,
              weight_decay: float, params0: dict[str, Any], key: jax.Array, *, batch_size: int = 256,
              eval_every: int = 100, eval_size: int = 2048):
    """A `step(state, t) -> (state, record)` for `loop.run_steps`, and its initial `State`.

    Batches: `batch_size` training indices drawn uniformly with `fold_in(key, t)`. Record (scalars
    unless noted): loss (batch MSE before the update), lr (schedule(t)), qk_grad (max |grad| over
    W_Q, W_K and their biases, all layers), grad_max `{name: max |grad|}` for every layer
    parameter (as `gradient_magnitudes`, on the step's batch), v_grad, o_grad, mlp_grad (global norms), entropy
    (attention entropy of the batch, nats), excess `{q, k, v, o}` (`excess_change` from `params0`
    after the update, over all layers), test_mse on the first `eval_size` test gaps every
    `eval_every` steps (NaN elsewhere)."""
    wd = jnp.float32(weight_decay)
    probe = data.test[:eval_size]

    def grad_norm(tree):
        return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))

    def step(state: State, t: jax.Array):
        idx = data.train[jax.random.randint(jax.random.fold_in(key, t), (batch_size,), 0, data.train.shape[0])]
        x, y = inputs(data, idx, cfg), data.target[idx]

        def objective(p):
            pred, attn = apply(p, x, cfg)
            return jnp.mean(jnp.square(pred - y)), attn

        (loss, attn), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        lr = schedule(t)
        decay = state.decay * (1.0 - lr * wd)
        g = grads["layers"]
        test_mse = jax.lax.cond(
            t % eval_every == 0,
            lambda: jnp.mean(jnp.square(apply(params, inputs(data, probe, cfg), cfg)[0] - data.target[probe])),
            lambda: jnp.float32(jnp.nan))
        record = {
            "loss": loss, "lr": lr, "test_mse": test_mse, "entropy": attention_entropy(attn),
            "qk_grad": jnp.max(jnp.stack([jnp.max(jnp.abs(g[n])) for n in ATTENTION_QK])),
            "grad_max": {n: jnp.max(jnp.abs(v)) for n, v in g.items()},
            "v_grad": grad_norm([g["v"], g["v_bias"]]), "o_grad": grad_norm([g["o"], g["o_bias"]]),
            "mlp_grad": grad_norm([g["up"], g["down"]]),
            "excess": {n: excess_change(params["layers"][n], params0["layers"][n], decay) for n in "qkvo"},
        }
        return State(params, opt_state, decay), record

    state = State(params0, opt.init(params0), jnp.float32(1.0))
    return step, state


def decay_factors(lrs: np.ndarray, weight_decay: float) -> np.ndarray:
    """`(T + 1,)` float64: prod_{s < t} (1 - lr_s wd) for t = 0..T, from the recorded lrs `(T,)`."""
    return np.concatenate([[1.0], np.cumprod(1.0 - np.asarray(lrs, np.float64) * weight_decay)])


# ----------------------------------------------------------------------------- spectra


def weight_matrices(params: dict[str, Any], cfg: Config) -> dict[str, np.ndarray]:
    """Named 2-D matrices for `analyses.rank.matrix_rank_rows`: per layer l, `l{l}.q`, `.k`, `.v`
    `(H*D, E)`, `.o` `(H*D, E)` (W_O transposed: same singular values), `.up` `(F, E)`, `.down`
    `(E, F)`; and `embed` `(num_index, E)` for the learned index table."""
    lay = jax.tree.map(np.asarray, params["layers"])
    out: dict[str, np.ndarray] = {}
    for layer in range(cfg.num_layers):
        for name in "qkvo":
            w = lay[name][layer]
            out[f"l{layer}.{name}"] = w.reshape(-1, w.shape[-1])
        out[f"l{layer}.up"] = lay["up"][layer]
        out[f"l{layer}.down"] = lay["down"][layer]
    if "table" in params["embed"]:
        out["embed"] = np.asarray(params["embed"]["table"])
    return out


def qk_kernel_erank(params: dict[str, Any]) -> jax.Array:
    """Effective rank `(L, H)` of each head's QK kernel W_Q,h^T W_K,h (factored, never formed)."""
    lay = params["layers"]
    return sp.effective_rank(sp.qk_kernel_singular_values(lay["q"], lay["k"]))


SOURCE_REFERENCE_DRAWS = 4  # unit-variance Gaussian matrices pooled into the source-style reference


def source_ks(w: np.ndarray, key: jax.Array, num_draws: int) -> tuple[float, float, float]:
    """The prime-gap source's "KS distance to random" of one matrix and its null:
    `(observed, null_mean, null_std)` (experiments/lm_rank_table.py reports it).

    Observed: two-sample KS distance of the raw singular values of `w (m, n)` to a pooled sample of
    singular values of unit-variance Gaussian `(m, n)` matrices. Null: the same distance for
    Gaussian matrices whose entries have `w`'s RMS, `num_draws` of them.
    """
    w = np.asarray(w, np.float32)
    m, n = w.shape
    k_ref, k_null = jax.random.split(key)
    reference = sp.gaussian_singular_values(k_ref, (SOURCE_REFERENCE_DRAWS, m, n)).reshape(-1)
    observed = float(sp.ks_two_sample(sp.singular_values(w), reference))
    rms = np.float32(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
    null = np.asarray(sp.ks_two_sample(rms * sp.gaussian_singular_values(k_null, (num_draws, m, n)), reference))
    return observed, float(np.mean(null)), float(np.std(null, ddof=1))
