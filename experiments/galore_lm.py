"""GaLore vs full Adam on a small language-model task: loss against optimizer-state memory.

Setting (docs/dynamics.md, Setups, "GaLore"; Zhao et al., ICML 2024). A token stream over V tokens is an order-2
Markov chain whose transition table P(x_t | x_{t-2}, x_{t-1}) = softmax(teacher(x_{t-2}, x_{t-1}) / τ)
comes from a random teacher MLP, so the best possible next-token loss is known exactly: the mean
entropy of the true conditionals at the positions seen (the "entropy floor", drawn beside every
curve). The student is an MLP language model over the previous two tokens,

    embed (V, E) -> concat (2E) -> W1 (2E, H) -> gelu -> W2 (H, H) -> gelu -> W_out (H, V),

with biases, trained on next-token cross-entropy with full Adam and with GaLore(Adam) at several
ranks r: same seeds, same init, same batches, same steps; the seeds run vmapped. As in the paper,
GaLore projects the hidden matrices (W1, W2) and leaves embeddings, output head and biases to
full-size Adam (`--project all` projects every matrix); T = 200, α = 0.25, and GaLore's base
learning rate is larger than Adam's (paper: 0.01 with α = 0.25 against a tuned Adam lr).

Recorded, not asserted: GaLore at rank r reaches a loss close to full Adam's with a smaller
optimizer state (bytes of the actual state pytrees; GaLore per projected (m, n) matrix:
min(m, n) r + 2 max(m, n) r floats against Adam's 2 m n).

    python experiments/galore_lm.py --out DIR [--steps 1000] [--seeds 2] [--ranks 4,8,16]
                                    [--checkpoint CKPT]

With `--checkpoint`, each run saves (orbax) every `--chunk` steps under CKPT/<run> and a rerun with
the same options resumes. Writes `metrics.json` (setting, per run: state bytes, final train and
eval loss per seed, loss curves), `summary.csv` (one row per run), `curves.csv` (per step, seed
means), and `loss.png`, `memory.png`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import NamedTuple

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from spectrax.report.plots import save_figure, subplots  # noqa: E402
from experiments._common import fmt, markdown, output_folder, run_main, write_table  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from spectrax.dynamics.loop import run_steps  # noqa: E402
from spectrax.optim import galore as galore_tx  # noqa: E402
from spectrax.optim import GaLoreState, adam_state_bytes, state_bytes, vmap_axes  # noqa: E402

__all__ = ["Chain", "apply", "breakdown", "init_params", "init_seeds", "loss_fn", "main", "make_chain", "run", "sample_streams"]

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


def _projected(args) -> tuple[str, ...]:
    return ("w1", "w2") if args.project == "hidden" else ("embed", "w1", "w2", "w_out")


def _optimizer(name: str, rank: int | None, args) -> optax.GradientTransformation:
    if rank is None:
        return optax.adam(args.lr)
    project = (lambda p: {k: k in ("w1", "w2") for k in p}) if args.project == "hidden" else None
    return galore_tx(rank, base=optax.adam(args.galore_lr), update_proj_gap=args.gap, scale=args.scale,
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


def train_one(name: str, rank: int | None, chain: Chain, params: dict, data_keys: jax.Array, args,
              progress: bool):
    """One optimizer from `params` (leading seed axis `(S,)`), all seeds vmapped.

    Returns (trajectory {loss, floor} `(steps, S)`, eval losses `(S,)`, eval floors `(S,)`, state
    bytes per seed, Adam-equivalent bytes per seed, state bytes by part (`breakdown`)).
    """
    opt = _optimizer(name, rank, args)
    one = jax.eval_shape(lambda: init_params(jax.random.key(0), args.vocab, args.embed, args.hidden))
    single_state = jax.eval_shape(opt.init, one)
    nbytes, adam_bytes = state_bytes(single_state), adam_state_bytes(one)
    axes = vmap_axes(single_state)
    opt_state = jax.vmap(opt.init, out_axes=axes)(params)

    def seed_step(p, s, key, t):
        tokens = sample_streams(jax.random.fold_in(key, t), chain, args.batch, args.length)
        loss, grads = jax.value_and_grad(loss_fn)(p, tokens)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, {"loss": loss, "floor": floor(chain, tokens)}

    batched = jax.vmap(seed_step, in_axes=(0, axes, 0, None), out_axes=(0, axes, 0))

    def step(state, t):
        p, s = state
        p, s, record = batched(p, s, data_keys, t)
        return (p, s), record

    settings = {"run": name, "rank": rank, **{k: v for k, v in vars(args).items()
                                              if k not in ("out", "checkpoint", "quiet", "ranks")}}
    directory = os.path.join(args.checkpoint, name) if args.checkpoint else None
    # optax's Adam raises a float to its int32 count, which strict dtype promotion refuses.
    with jax.numpy_dtype_promotion("standard"):
        (params, _), traj = run_steps(step, (params, opt_state), args.steps, chunk=args.chunk,
                                      directory=directory, settings=settings,
                                      progress=name if progress else None)
        eval_loss, eval_floor = _evaluate(params, data_keys, chain, 4 * args.batch, args.length)
    return traj, np.asarray(eval_loss), np.asarray(eval_floor), nbytes, adam_bytes, breakdown(single_state,
                                                                                              _projected(args))


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along axis 0 (shorter windows at the start)."""
    c = np.cumsum(np.concatenate([np.zeros((1, *x.shape[1:])), x]), axis=0)
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo).reshape(-1, *([1] * (x.ndim - 1)))


def run(out: str, args) -> dict:
    """Train every optimizer and write metrics, tables and figures into the new folder `out`."""
    ranks = [int(r) for r in str(args.ranks).split(",") if r.strip()]
    if args.steps < 1 or args.seeds < 1 or any(r < 1 for r in ranks):
        raise ValueError("--steps, --seeds and every rank must be >= 1")
    if args.length < 3 or args.vocab < 2:
        raise ValueError("--length must be >= 3 and --vocab >= 2")
    runs = [("adam", None)] + [(f"galore_r{r}", r) for r in ranks]
    with output_folder(out, []) as folder:
        chain = make_chain(jax.random.key(10_000 + args.seed), args.vocab, temperature=args.temperature)
        # every optimizer starts from the same init and sees the same batches, seed by seed
        params, data_keys = init_seeds(jnp.arange(args.seeds, dtype=jnp.int32), args.seed, args.vocab, args.embed,
                                       args.hidden)
        results = {}
        for name, rank in runs:
            start = time.perf_counter()
            traj, ev, ev_floor, nbytes, adam_bytes, parts = train_one(name, rank, chain, params, data_keys, args,
                                                                      not args.quiet)
            results[name] = {"rank": rank, "traj": traj, "eval_loss": ev, "eval_floor": ev_floor, "bytes": nbytes,
                             "adam_bytes": adam_bytes, "parts": parts, "seconds": time.perf_counter() - start}
        tail = max(1, args.steps // 10)
        summary = {"run": [], "rank": [], "state_bytes": [], "state_vs_adam": [], "projected_moments_bytes": [],
                   "projectors_bytes": [], "other_state_bytes": [], "train_loss_last10pct": [],
                   "eval_loss_mean": [], "eval_loss_std": [], "eval_floor": [], "eval_excess_mean": [],
                   "excess_vs_adam": [], "paired_diff_vs_adam_mean": [], "paired_diff_vs_adam_std": [],
                   "seconds": []}
        adam_excess = float(np.mean(results["adam"]["eval_loss"] - results["adam"]["eval_floor"]))
        for name, res in results.items():
            excess = res["eval_loss"] - res["eval_floor"]
            summary["run"].append(name)
            summary["rank"].append(res["rank"] if res["rank"] is not None else "full")
            summary["state_bytes"].append(res["bytes"])
            summary["state_vs_adam"].append(res["bytes"] / res["adam_bytes"])
            summary["projected_moments_bytes"].append(res["parts"]["projected_moments"])
            summary["projectors_bytes"].append(res["parts"]["projectors"])
            summary["other_state_bytes"].append(res["parts"]["other_moments"] + res["parts"]["counts"])
            summary["train_loss_last10pct"].append(float(np.mean(res["traj"]["loss"][-tail:])))
            summary["eval_loss_mean"].append(float(np.mean(res["eval_loss"])))
            summary["eval_loss_std"].append(float(np.std(res["eval_loss"])))
            summary["eval_floor"].append(float(np.mean(res["eval_floor"])))
            summary["eval_excess_mean"].append(float(np.mean(excess)))
            summary["excess_vs_adam"].append(float(np.mean(excess)) / adam_excess)
            # same seeds, same init and batches: the per-seed difference removes the shared noise
            paired = res["eval_loss"] - results["adam"]["eval_loss"]
            summary["paired_diff_vs_adam_mean"].append(float(np.mean(paired)))
            summary["paired_diff_vs_adam_std"].append(float(np.std(paired)))
            summary["seconds"].append(res["seconds"])
        table = {k: np.asarray(v, dtype=object if k in ("run", "rank") else np.float64) for k, v in summary.items()}
        write_table(table, folder, "summary")
        curves = {"step": np.arange(args.steps),
                  "floor": np.mean(results["adam"]["traj"]["floor"], axis=1),
                  **{name: np.mean(res["traj"]["loss"], axis=1) for name, res in results.items()}}
        write_table(curves, folder, "curves")
        metrics = {
            "setting": {k: v for k, v in vars(args).items() if k not in ("out", "checkpoint", "quiet")},
            "model": {"vocab": args.vocab, "embed": args.embed, "hidden": args.hidden,
                      "matrices": {"embed": [args.vocab, args.embed], "w1": [2 * args.embed, args.hidden],
                                   "w2": [args.hidden, args.hidden], "w_out": [args.hidden, args.vocab]},
                      "projected": list(_projected(args))},
            "entropy_floor_mean": float(np.mean(chain.entropy)), "ln_V": math.log(args.vocab),
            "runs": {name: {"rank": res["rank"], "state_bytes": res["bytes"], "adam_state_bytes": res["adam_bytes"],
                            "state_bytes_by_part": res["parts"],
                            "eval_loss": res["eval_loss"].tolist(), "eval_floor": res["eval_floor"].tolist(),
                            "train_loss_last10pct": float(np.mean(res["traj"]["loss"][-tail:])),
                            "seconds": res["seconds"],
                            "loss_curve": np.mean(res["traj"]["loss"], axis=1).tolist()}
                     for name, res in results.items()},
            "summary": {k: [x if isinstance(x, str | int) or x is None else float(x) for x in v]
                        for k, v in summary.items()},
        }
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        _plots(folder, results, args)
    if not args.quiet:
        shown = {"run": summary["run"], "rank": summary["rank"],
                 "state KiB": [fmt(b / 1024) for b in summary["state_bytes"]],
                 "state / Adam": [fmt(x) for x in summary["state_vs_adam"]],
                 "eval loss": [f"{m:.4f} ± {s:.4f}" for m, s in zip(summary["eval_loss_mean"], summary["eval_loss_std"])],
                 "excess over floor": [fmt(x) for x in summary["eval_excess_mean"]],
                 "minus Adam (paired)": [f"{m:+.4f} ± {d:.4f}" for m, d in zip(summary["paired_diff_vs_adam_mean"],
                                                                            summary["paired_diff_vs_adam_std"])],
                 "s": [f"{x:.0f}" for x in summary["seconds"]]}
        print(markdown(f"GaLore vs Adam: V={args.vocab}, H={args.hidden}, {args.steps} steps, {args.seeds} seeds",
                       shown, note=f"entropy floor (Bayes loss) of the eval batches: {summary['eval_floor'][0]:.4f} "
                                   f"nats; ln V = {math.log(args.vocab):.4f}"))
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _plots(folder: str, results: dict, args) -> None:
    names = list(results)
    cmap = matplotlib.colormaps["plasma"](np.linspace(0.1, 0.8, max(1, len(names) - 1)))
    colors = {"adam": "k", **dict(zip(names[1:], cmap))}
    label = lambda n: "full Adam" if n == "adam" else f"GaLore-Adam r = {results[n]['rank']}"  # noqa: E731
    t = np.arange(1, args.steps + 1)
    fig, (ax, ax2) = subplots(1, 2, figsize=(11, 4))
    window = max(1, args.steps // 100)
    floor_curve = smooth(np.mean(results["adam"]["traj"]["floor"], axis=1), window)
    for n in names:
        sm = smooth(results[n]["traj"]["loss"], window)  # (steps, seeds)
        ax.semilogx(t, sm.mean(axis=1), color=colors[n], label=label(n), linewidth=1.5 if n == "adam" else 1.1)
    ax.semilogx(t, floor_curve, "--", color="0.4", label="entropy floor (Bayes loss)")
    ax.axhline(math.log(args.vocab), color="0.7", linestyle=":", label=f"ln V = {math.log(args.vocab):.2f} (uniform)")
    ax.set(xlabel="step (log scale)", ylabel="next-token cross-entropy (nats)",
           title=f"Training loss (seed mean, {window}-step moving average)")
    ax.set_ylim(floor_curve.min() - 0.1, math.log(args.vocab) + 0.1)
    ax.legend(fontsize=8)
    window = max(1, args.steps // 20)
    for n in names:
        excess = smooth(results[n]["traj"]["loss"] - results[n]["traj"]["floor"], window).mean(axis=1)
        ax2.semilogy(t, np.maximum(excess, 1e-4), color=colors[n], label=label(n))
    ax2.set(xlabel="step", ylabel="loss − entropy floor (nats, log scale)",
            title=f"Excess over the Bayes loss ({window}-step moving average)")
    ax2.legend(fontsize=8)
    save_figure(fig, os.path.join(folder, "loss.png"))

    fig, (ax, ax2) = subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(names))[::-1]
    projected = ", ".join(_projected(args))
    parts = [("other_moments", "Adam moments of the other parameters (full size)", "0.75"),
             ("projected_moments", f"moments of {projected} (low-rank under GaLore)", "tab:blue"),
             ("projectors", f"GaLore projectors of {projected}", "tab:orange")]
    left = np.zeros(len(names))
    for key, text, color in parts:
        kib = np.array([results[n]["parts"][key] / 1024 for n in names])
        ax.barh(y, kib, left=left, color=color, label=text)
        left += kib
    for yi, n in zip(y, names):
        ax.text(left[names.index(n)] + 0.02 * left.max(), yi, f"{results[n]['bytes'] / 1024:.0f} KiB "
                f"({results[n]['bytes'] / results[n]['adam_bytes']:.0%} of Adam)", va="center", fontsize=8)
    ax.set_yticks(y, [label(n) for n in names])
    ax.set(xlabel="optimizer state (KiB)", title="Optimizer-state memory, by part")
    ax.set_xlim(0, left.max() * 1.45)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    for yi, n in zip(y, names):
        excess = results[n]["eval_loss"] - results[n]["eval_floor"]
        ax2.barh(yi, excess.mean(), color=colors[n], alpha=0.6)
        ax2.plot(excess, np.full(len(excess), yi), "o", color="k", markersize=4)
        ax2.text(excess.mean() * 0.03, yi + 0.3, f"mean {excess.mean():.4f}", fontsize=7, va="center")
    ax2.set_yticks(y, [label(n) for n in names])
    ax2.set(xlabel="held-out loss − entropy floor (nats)",
            title=f"Held-out excess loss (dots: {args.seeds} seeds)")
    save_figure(fig, os.path.join(folder, "memory.png"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run (default 1000)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per optimizer, run vmapped (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="base PRNG seed of chain, inits and data (default 0)")
    parser.add_argument("--ranks", default="4,8,16", help="GaLore ranks, comma-separated (default 4,8,16)")
    parser.add_argument("--vocab", type=int, default=64, help="V, tokens (default 64)")
    parser.add_argument("--embed", type=int, default=32, help="E, embedding width (default 32)")
    parser.add_argument("--hidden", type=int, default=256, help="H, hidden width (default 256)")
    parser.add_argument("--batch", type=int, default=16, help="streams per batch (default 16)")
    parser.add_argument("--length", type=int, default=34, help="tokens per stream (default 34: 32 targets)")
    parser.add_argument("--temperature", type=float, default=1.0, help="teacher temperature τ (default 1)")
    parser.add_argument("--lr", type=float, default=3e-3, help="full Adam learning rate (default 3e-3)")
    parser.add_argument("--galore-lr", type=float, default=1e-2, help="GaLore's base Adam lr (default 1e-2)")
    parser.add_argument("--scale", type=float, default=0.25, help="GaLore α (default 0.25)")
    parser.add_argument("--gap", type=int, default=200, help="GaLore T, steps between SVD refreshes (default 200)")
    parser.add_argument("--project", choices=("hidden", "all"), default="hidden",
                        help="matrices GaLore projects: hidden = W1, W2 (paper); all = every matrix")
    parser.add_argument("--chunk", type=int, default=250, help="steps per compiled chunk / checkpoint (default 250)")
    parser.add_argument("--checkpoint", default=None, help="folder for orbax checkpoints; rerun to resume")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(args.out, args)
        return 0

    return run_main("galore_lm", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
