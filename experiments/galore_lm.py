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
import dataclasses
import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from spectrax.report.plots import save_figure, subplots  # noqa: E402
from experiments._common import add_config_options, fmt, markdown, output_folder, run_main, write_table  # noqa: E402

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import galore_lm as lm  # noqa: E402

__all__ = ["build_parser", "main", "run", "smooth"]

def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along axis 0 (shorter windows at the start)."""
    c = np.cumsum(np.concatenate([np.zeros((1, *x.shape[1:])), x]), axis=0)
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo).reshape(-1, *([1] * (x.ndim - 1)))


def run(out: str, config: lm.Config, *, checkpoint: str | None = None, quiet: bool = False) -> dict:
    """Train every optimizer (`galore_lm.simulate`), tabulate them (`galore_lm.summarize`) and write
    metrics, tables and figures into the new folder `out`."""
    with output_folder(out, []) as folder:
        chain, runs = lm.simulate(config, directory=checkpoint, progress=not quiet)
        summary = lm.summarize(runs, config)
        table = {k: np.asarray(v, dtype=object if k in ("run", "rank") else np.float64) for k, v in summary.items()}
        write_table(table, folder, "summary")
        curves = {"step": np.arange(config.steps), "floor": np.mean(runs["adam"].trajectory["floor"], axis=1),
                  **{name: np.mean(res.trajectory["loss"], axis=1) for name, res in runs.items()}}
        write_table(curves, folder, "curves")
        tail = max(1, config.steps // 10)
        metrics = {
            "setting": {**dataclasses.asdict(config), "ranks": ",".join(map(str, config.ranks))},
            "model": {"vocab": config.vocab, "embed": config.embed, "hidden": config.hidden,
                      "matrices": {"embed": [config.vocab, config.embed], "w1": [2 * config.embed, config.hidden],
                                   "w2": [config.hidden, config.hidden], "w_out": [config.hidden, config.vocab]},
                      "projected": list(lm.projected(config))},
            "entropy_floor_mean": float(np.mean(chain.entropy)), "ln_V": math.log(config.vocab),
            "runs": {name: {"rank": res.rank, "state_bytes": res.state_bytes, "adam_state_bytes": res.adam_bytes,
                            "state_bytes_by_part": res.parts,
                            "eval_loss": res.eval_loss.tolist(), "eval_floor": res.eval_floor.tolist(),
                            "train_loss_last10pct": float(np.mean(res.trajectory["loss"][-tail:])),
                            "seconds": res.seconds,
                            "loss_curve": np.mean(res.trajectory["loss"], axis=1).tolist()}
                     for name, res in runs.items()},
            "summary": {k: [x if isinstance(x, str | int) or x is None else float(x) for x in v]
                        for k, v in summary.items()},
        }
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        _plots(folder, runs, config)
    if not quiet:
        shown = {"run": summary["run"], "rank": summary["rank"],
                 "state KiB": [fmt(b / 1024) for b in summary["state_bytes"]],
                 "state / Adam": [fmt(x) for x in summary["state_vs_adam"]],
                 "eval loss": [f"{m:.4f} ± {s:.4f}" for m, s in zip(summary["eval_loss_mean"], summary["eval_loss_std"])],
                 "excess over floor": [fmt(x) for x in summary["eval_excess_mean"]],
                 "minus Adam (paired)": [f"{m:+.4f} ± {d:.4f}" for m, d in zip(summary["paired_diff_vs_adam_mean"],
                                                                            summary["paired_diff_vs_adam_std"])],
                 "s": [f"{x:.0f}" for x in summary["seconds"]]}
        print(markdown(f"GaLore vs Adam: V={config.vocab}, H={config.hidden}, {config.steps} steps, {config.seeds} seeds",
                       shown, note=f"entropy floor (Bayes loss) of the eval batches: {summary['eval_floor'][0]:.4f} "
                                   f"nats; ln V = {math.log(config.vocab):.4f}"))
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _plots(folder: str, runs: dict, config: lm.Config) -> None:
    results = {name: {"rank": r.rank, "traj": r.trajectory, "eval_loss": r.eval_loss, "eval_floor": r.eval_floor,
                      "bytes": r.state_bytes, "adam_bytes": r.adam_bytes, "parts": r.parts} for name, r in runs.items()}
    names = list(results)
    cmap = matplotlib.colormaps["plasma"](np.linspace(0.1, 0.8, max(1, len(names) - 1)))
    colors = {"adam": "k", **dict(zip(names[1:], cmap))}
    label = lambda n: "full Adam" if n == "adam" else f"GaLore-Adam r = {results[n]['rank']}"  # noqa: E731
    t = np.arange(1, config.steps + 1)
    fig, (ax, ax2) = subplots(1, 2, figsize=(11, 4))
    window = max(1, config.steps // 100)
    floor_curve = smooth(np.mean(results["adam"]["traj"]["floor"], axis=1), window)
    for n in names:
        sm = smooth(results[n]["traj"]["loss"], window)  # (steps, seeds)
        ax.semilogx(t, sm.mean(axis=1), color=colors[n], label=label(n), linewidth=1.5 if n == "adam" else 1.1)
    ax.semilogx(t, floor_curve, "--", color="0.4", label="entropy floor (Bayes loss)")
    ax.axhline(math.log(config.vocab), color="0.7", linestyle=":", label=f"ln V = {math.log(config.vocab):.2f} (uniform)")
    ax.set(xlabel="step (log scale)", ylabel="next-token cross-entropy (nats)",
           title=f"Training loss (seed mean, {window}-step moving average)")
    ax.set_ylim(floor_curve.min() - 0.1, math.log(config.vocab) + 0.1)
    ax.legend(fontsize=8)
    window = max(1, config.steps // 20)
    for n in names:
        excess = smooth(results[n]["traj"]["loss"] - results[n]["traj"]["floor"], window).mean(axis=1)
        ax2.semilogy(t, np.maximum(excess, 1e-4), color=colors[n], label=label(n))
    ax2.set(xlabel="step", ylabel="loss − entropy floor (nats, log scale)",
            title=f"Excess over the Bayes loss ({window}-step moving average)")
    ax2.legend(fontsize=8)
    save_figure(fig, os.path.join(folder, "loss.png"))

    fig, (ax, ax2) = subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(names))[::-1]
    projected = ", ".join(lm.projected(config))
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
            title=f"Held-out excess loss (dots: {config.seeds} seeds)")
    save_figure(fig, os.path.join(folder, "memory.png"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--checkpoint", default=None, help="folder for orbax checkpoints; rerun to resume")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    add_config_options(parser, lm.Config, {
        "steps": "training steps per run", "seeds": "seeds per optimizer, run vmapped",
        "seed": "base PRNG seed of chain, inits and data", "ranks": "GaLore ranks, comma-separated",
        "vocab": "V, tokens", "embed": "E, embedding width", "hidden": "H, hidden width",
        "batch": "streams per batch", "length": "tokens per stream (34: 32 targets)",
        "temperature": "teacher temperature τ", "lr": "full Adam learning rate", "galore_lr": "GaLore's base Adam lr",
        "scale": "GaLore α", "gap": "GaLore T, steps between SVD refreshes",
        "project": "matrices GaLore projects: hidden = W1, W2 (paper); all = every matrix",
        "chunk": "steps per compiled chunk / checkpoint"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    out, checkpoint, quiet = (options.pop(k) for k in ("out", "checkpoint", "quiet"))

    def body() -> int:
        run(out, lm.Config(**options), checkpoint=checkpoint, quiet=quiet)
        return 0

    return run_main("galore_lm", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
