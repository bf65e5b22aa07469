"""Scan and Snap, "Fig. 4": common tokens are suppressed, distinct tokens win in order of P(l|n).

Setting (docs/dynamics.md, Setups): 2 last tokens, one next token each (M = 34), zero init, SGD with momentum 0.9,
lr_Z = lr_Y = 1, batch 128, sequence length 128, 100 iterations. Theory held against the run:

- at zero init the loss is exactly ln M (Y = 0 gives uniform logits over the M tokens);
- the logits Z[m, l] of common tokens l (shared by every next token) go negative;
- the logits of the distinct tokens of n grow in the order of P(l | n) (rank correlation ~ 1);
- the attention over the distinct tokens, c_n(l) ∝ P(l|n) exp(Z[m, l]), sharpens (entropy falls).

    python experiments/scan_snap_fig4.py --out DIR [--steps 100] [--seed 0]

Writes `metrics.json` (per-iteration loss, Z trajectories per token class, entropy, final attention
logits per fact with P(l|n), and the checks above), `trajectory.csv`, and `loss.png`,
`logits.png`, `attention.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from spectrax.report.plots import save_figure, subplots  # noqa: E402
from experiments._common import output_folder, run_main, write_table  # noqa: E402

import jax  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import scan_snap as ss  # noqa: E402

__all__ = ["main", "run"]


def run(out: str, *, steps: int = 100, seed: int = 0, num_last: int = 2, next_per_last: int = 1,
        lr_z: float = 1.0, ratio: float = 1.0, momentum: float = 0.9, batch_size: int = 128,
        seq_len: int = 128, quiet: bool = False) -> dict:
    """Train the Fig. 4 setting and write its metrics and figures into the new folder `out`."""
    with output_folder(out, []) as folder:
        task = ss.make_task(num_last, next_per_last)
        m = int(task.probs.shape[1])
        params, traj = ss.run(jax.random.key(seed), task, ss.hyper(lr_z, ratio, momentum), steps=steps,
                              batch_size=batch_size, seq_len=seq_len, zero_init=True, record_rows=True)
        traj = jax.tree.map(np.asarray, traj)
        facts, checks = ss.summarize(traj, task, params)
        metrics = {
            "setting": {"num_last": num_last, "next_per_last": next_per_last, "M": m, "steps": steps, "seed": seed,
                        "lr_z": lr_z, "lr_y": lr_z * ratio, "momentum": momentum, "batch_size": batch_size,
                        "seq_len": seq_len, "init": "zero"},
            "checks": checks, "loss": traj.loss.tolist(), "z_common": traj.z_common.tolist(),
            "z_distinct_by_rank": traj.z_distinct.tolist(), "entropy": traj.entropy.tolist(), "final": facts,
        }
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        table = {"iteration": np.arange(steps), "loss": traj.loss, "z_common": traj.z_common,
                 "entropy": traj.entropy, **{f"z_distinct_rank{r}": traj.z_distinct[:, r]
                                             for r in range(traj.z_distinct.shape[1])}}
        write_table(table, folder, "trajectory")
        _plots(folder, traj, task, m)
    if not quiet:
        print(f"Scan and Snap Fig. 4 (M = {m}, {steps} iterations, zero init)")
        print(f"  loss[0] = {checks['initial_loss']:.6f}  ln M = {checks['ln_M']:.6f}  "
              f"final loss = {traj.loss[-1]:.3g}")
        print(f"  common-token logits at the end: max {checks['max_final_common_logit']:.3f} (theory: < 0)")
        print(f"  distinct-token logits vs P(l|n): rank correlation >= {checks['min_rank_correlation']:.3f} "
              f"(theory: 1)")
        print(f"  entropy of c_n: {checks['entropy_initial']:.3f} -> {checks['entropy_final']:.3f}")
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _plots(folder: str, traj, task, m: int) -> None:
    t = np.arange(len(traj.loss))
    fig, ax = subplots(figsize=(5, 3.5))
    ax.semilogy(t, traj.loss, label="batch loss")
    ax.axhline(np.log(m), color="k", linestyle="--", linewidth=0.8, label=f"ln M = {np.log(m):.3f}")
    ax.set(xlabel="iteration", ylabel="cross-entropy (log scale)", title="Scan and Snap Fig. 4: loss")
    ax.legend()
    save_figure(fig, os.path.join(folder, "loss.png"))

    fig, ax = subplots(figsize=(6, 4))
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 1, traj.z_distinct.shape[1]))
    probs = np.asarray(task.probs[0])[np.asarray(task.distinct[0])]
    for r in range(traj.z_distinct.shape[1]):
        ax.plot(t, traj.z_distinct[:, r], color=colors[r], label=f"distinct, P(l|n)={probs[r]:.3f}")
    ax.plot(t, traj.z_common, color="r", linewidth=2, linestyle="--", label="common (mean)")
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set(xlabel="iteration", ylabel="Z[m, l] (mean over facts)",
           title="Attention logits per token class")
    ax.legend(fontsize=6, ncol=2)
    save_figure(fig, os.path.join(folder, "logits.png"))

    # c(l) ∝ P(l|n) exp(Z[m, l]) over the fact's whole support (common | distinct), fact 0.
    support = np.asarray(task.support[0])
    p = np.asarray(task.probs[0])[support]
    show = [i for i in (0, 2, 4, 6, 10, 20, 50) if i < len(t)] + [len(t) - 1]
    rows = np.asarray(traj.z_rows)[show, 0][:, support]
    c = p * np.exp(rows - rows.max(axis=1, keepdims=True))
    c /= c.sum(axis=1, keepdims=True)
    fig, ax = subplots(figsize=(6, 3.5))
    im = ax.imshow(c, aspect="auto", cmap="viridis")
    ax.axvline(len(task.common) - 0.5, color="w", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(show)), [f"iter {i}" for i in show])
    ax.set(xlabel="contextual token (10 common | 10 distinct of n, by increasing P(l|n))",
           title="Attention c(l) ∝ P(l|n) exp(Z[m,l]), fact 0")
    fig.colorbar(im, ax=ax, label="c(l)")
    save_figure(fig, os.path.join(folder, "attention.png"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--steps", type=int, default=100, help="iterations (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the data (default 0)")
    parser.add_argument("--lr-z", type=float, default=1.0, help="learning rate of Z (default 1)")
    parser.add_argument("--ratio", type=float, default=1.0, help="lr_Y / lr_Z (default 1)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum; 0 = plain SGD (default 0.9)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.steps < 1:
            raise ValueError("--steps must be >= 1")
        run(args.out, steps=args.steps, seed=args.seed, lr_z=args.lr_z, ratio=args.ratio,
            momentum=args.momentum, quiet=args.quiet)
        return 0

    return run_main("scan_snap_fig4", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
