"""Scan and Snap, "Fig. 6": how sparse attention gets depends on lr_Z and lr_Y / lr_Z.

Setting (docs/dynamics.md, Setups): last tokens in {1, 3, 5, 10} with two next tokens each (K = 2), lr_Z in
{0.5, 1, 2, 3}, ratio lr_Y / lr_Z in {1, 2, 5, 10}, random init (uniform ±1/√M), 10 seeds,
100 iterations of SGD with momentum 0.9, batch 128, sequence length 128. Metric: for each next
token n, c_n(l) ∝ P(l|n) exp(Z[m, l]) over the 10 distinct tokens of n, its entropy, averaged
over n, at the last iteration; mean and std over seeds.

The whole grid (64 configurations x 10 seeds) runs as ONE compiled call (`scan_snap.run_grid`):
one vmapped group per number of last tokens (M = 33, 79, 125, 240), each at its own size, all in
one XLA program.

Theory: entropy falls faster with a larger lr_Z (attention snaps sooner), so at a fixed number of
iterations the final entropy decreases with lr_Z; a larger lr_Y / lr_Z gives slightly denser
attention (the decoder fits first and the gradient reaching Z shrinks).

    python experiments/scan_snap_fig6.py --out DIR [--seeds 10] [--steps 100] [--quick]

Writes `table.csv` (one row per configuration: entropy mean ± std, final loss), `metrics.json`
(the grid, per-seed entropies, the monotonicity checks, wall time) and `entropy.png`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from spectrax.report.plots import save_figure, subplots  # noqa: E402
from experiments._common import fmt, markdown, output_folder, run_main, write_table  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import scan_snap as ss  # noqa: E402

__all__ = ["GRID", "QUICK_GRID", "grid_inputs", "main", "run", "run_grid"]

GRID = {"num_last": (1, 3, 5, 10), "lr_z": (0.5, 1.0, 2.0, 3.0), "ratio": (1.0, 2.0, 5.0, 10.0)}
QUICK_GRID = {"num_last": (1, 3), "lr_z": (0.5, 1.0, 3.0), "ratio": (1.0, 10.0)}
NEXT_PER_LAST = 2


def grid_inputs(grid: dict, seeds: int, seed: int = 0):
    """(configs, keys `(C, R)`, groups): configs in `itertools.product` order; groups =
    (index array into configs, keys, task, hypers stacked) per number of last tokens, as
    `scan_snap.run_grid` takes them."""
    configs = list(itertools.product(grid["num_last"], grid["lr_z"], grid["ratio"]))
    keys = jax.random.split(jax.random.key(seed), len(configs) * seeds).reshape(len(configs), seeds)
    groups = []
    for n in grid["num_last"]:
        index = np.array([i for i, c in enumerate(configs) if c[0] == n])
        hypers = ss.stack([ss.hyper(configs[i][1], configs[i][2]) for i in index])
        groups.append((index, keys[index], ss.make_task(n, NEXT_PER_LAST), hypers))
    return configs, keys, groups


def run_grid(groups, *, steps: int, checkpoint: str | None = None, settings: dict | None = None):
    """All groups in one compiled program (saved to `checkpoint` every 25 steps and resumed); the
    trajectories put back in config order, `(C, R, steps)`."""
    index, keys, tasks, hypers = zip(*groups)
    results = ss.run_grid(keys, tasks, hypers, steps=steps, chunk=25, directory=checkpoint, settings=settings)
    order = np.argsort(np.concatenate(index))
    merge = lambda *xs: np.concatenate([np.asarray(x) for x in xs])[order]  # noqa: E731
    return jax.tree.map(merge, *(traj for _, traj in results))


def run(out: str, *, seeds: int = 10, steps: int = 100, seed: int = 0, quick: bool = False,
        checkpoint: str | None = None, quiet: bool = False) -> dict:
    grid = QUICK_GRID if quick else GRID
    with output_folder(out, []) as folder:
        configs, _, groups = grid_inputs(grid, seeds, seed)
        start = time.perf_counter()
        traj = run_grid(groups, steps=steps, checkpoint=checkpoint,
                        settings={"seeds": seeds, "seed": seed, "grid": grid})
        entropy = traj.entropy[:, :, -1]  # (C, R)
        final_loss = traj.loss[:, :, -1]
        seconds = time.perf_counter() - start  # compile + run: one call
        table = {
            "num_last": np.array([c[0] for c in configs]), "num_next": np.array([c[0] * NEXT_PER_LAST for c in configs]),
            "M": np.array([ss.num_tokens(c[0], NEXT_PER_LAST) for c in configs]),
            "lr_z": np.array([c[1] for c in configs]), "ratio": np.array([c[2] for c in configs]),
            "lr_y": np.array([c[1] * c[2] for c in configs]),
            "entropy_mean": entropy.mean(axis=1), "entropy_std": entropy.std(axis=1),
            "final_loss_mean": final_loss.mean(axis=1), "seeds": np.full(len(configs), seeds),
        }
        write_table(table, folder, "table")
        checks = ss.summarize_grid(configs, entropy, grid)
        metrics = {"grid": grid, "seeds": seeds, "steps": steps, "seed": seed, "configs": configs,
                   "entropy_per_seed": entropy.tolist(), "checks": checks,
                   "initial_entropy": float(traj.entropy[0, 0, 0]),
                   "wall_seconds_including_compile": seconds, "runs": int(entropy.size)}
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        _plot(os.path.join(folder, "entropy.png"), table, grid, seeds, steps)
    if not quiet:
        cells = {"#last": table["num_last"], "lr_Z": table["lr_z"], "lr_Y/lr_Z": table["ratio"],
                 "entropy": [f"{fmt(m, 4)} ± {fmt(s, 2)}" for m, s in zip(table["entropy_mean"], table["entropy_std"])]}
        print(markdown(f"Scan and Snap Fig. 6: final entropy of c_n ({seeds} seeds, {steps} iterations)", cells,
                       note=f"{checks['cells_decreasing_in_lr_z']}/{checks['cells']} (#last, ratio) cells decrease "
                            f"monotonically in lr_Z; Spearman(lr_Z, entropy) = {checks['spearman_lr_z_vs_entropy']:.3f}. "
                            f"{entropy.size} runs in one compiled call: {seconds:.1f} s including compilation."))
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _plot(path: str, table: dict, grid: dict, seeds: int, steps: int) -> None:
    lasts = grid["num_last"]
    fig, axes = subplots(1, len(lasts), figsize=(3.2 * len(lasts), 3.2), sharey=True)
    for ax, n in zip(np.atleast_1d(axes), lasts):
        for lr in grid["lr_z"]:
            sel = (table["num_last"] == n) & (table["lr_z"] == lr)
            ax.errorbar(table["ratio"][sel], table["entropy_mean"][sel], table["entropy_std"][sel],
                        marker="o", capsize=2, label=f"lr_Z = {lr:g}")
        ax.set_xscale("log")
        ax.set_xticks(grid["ratio"], [f"{r:g}" for r in grid["ratio"]])
        ax.set(title=f"#last/next = {n}/{n * NEXT_PER_LAST}", xlabel="lr_Y / lr_Z")
    first = np.atleast_1d(axes)[0]
    first.set_ylabel("mean entropy of c_n (nats)")
    first.legend(fontsize=7)
    fig.suptitle(f"Scan and Snap Fig. 6: final attention entropy ({seeds} seeds, {steps} iterations, mean ± std)",
                 fontsize=10)
    save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per configuration (default 10)")
    parser.add_argument("--steps", type=int, default=100, help="iterations (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed the per-run keys are split from (default 0)")
    parser.add_argument("--quick", action="store_true", help=f"a 12-configuration grid {QUICK_GRID}")
    parser.add_argument("--checkpoint", default=None,
                        help="folder to save the grid to every 25 steps and resume from (default: none)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.seeds < 2 or args.steps < 1:
            raise ValueError("need --seeds >= 2 (for a std) and --steps >= 1")
        run(args.out, seeds=args.seeds, steps=args.steps, seed=args.seed, quick=args.quick, checkpoint=args.checkpoint,
            quiet=args.quiet)
        return 0

    return run_main("scan_snap_fig6", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
