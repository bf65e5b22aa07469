"""Scan and Snap: under plain SGD the attention logits grow like log t, then slow sharply ("snap").

Theorem 4 of the paper: the logit B_n(t) of the winning distinct token grows as O(ln t) while
attention "scans" and as O(ln ln t) once it "snaps" (t beyond O(2K ln M / lr_Y)), so its growth per
decade of iterations shrinks. This runs the Fig. 4 data (2 last tokens, one next token each,
M = 34) from zero init with plain SGD (momentum 0), lr_Z = 1, lr_Y = lr_Z x ratio (default 10: the
theory assumes the decoder learns faster), for many iterations, and measures the top distinct
logit's increase per decade of t.

    python experiments/scan_snap_snap.py --out DIR [--steps 20000] [--ratio 10] [--seed 0]

Writes `metrics.json` (increments per decade, early/late slopes in ln t, final logits),
`trajectory.csv` (log-spaced iterations) and `snap.png` (logits against t on a log axis, and the
increment per decade).
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

__all__ = ["decade_increments", "log_slope", "main", "run"]


def log_slope(z: np.ndarray, t0: int, t1: int) -> float:
    """Least-squares slope of z(t) against ln t over t0 <= t <= t1 (z indexed by iteration)."""
    t = np.arange(t0, t1 + 1)
    return float(np.polyfit(np.log(t), z[t0:t1 + 1], 1)[0])


def decade_increments(z: np.ndarray, start: int = 10) -> list[dict]:
    """z(10 t) - z(t) for t = start, 10 start, ... while 10 t fits in the run."""
    rows, t = [], start
    while 10 * t < len(z):
        rows.append({"from": t, "to": 10 * t, "increase": float(z[10 * t] - z[t])})
        t *= 10
    return rows


def run(out: str, *, steps: int = 20000, seed: int = 0, lr_z: float = 1.0, ratio: float = 10.0,
        quiet: bool = False) -> dict:
    if steps < 200:
        raise ValueError("--steps must be >= 200 to see more than one decade after the first 10 iterations")
    with output_folder(out, []) as folder:
        task = ss.make_task(2, 1)
        _, traj = ss.run(jax.random.key(seed), task, ss.hyper(lr_z, ratio, momentum=0.0), steps=steps,
                              zero_init=True)
        top = np.asarray(traj.z_distinct[:, -1])  # the most likely distinct token's logit, mean over facts
        common = np.asarray(traj.z_common)
        decades = decade_increments(top)
        early, late = (10, 100), (steps // 10, steps - 1)
        slopes = {"early_window": early, "late_window": late, "early_slope_per_ln_t": log_slope(top, *early),
                  "late_slope_per_ln_t": log_slope(top, *late)}
        slopes["late_over_early"] = slopes["late_slope_per_ln_t"] / slopes["early_slope_per_ln_t"]
        metrics = {"setting": {"num_last": 2, "next_per_last": 1, "M": int(task.probs.shape[1]), "steps": steps,
                               "seed": seed, "lr_z": lr_z, "lr_y": lr_z * ratio, "momentum": 0.0, "init": "zero"},
                   "decade_increments": decades, "slopes": slopes, "final_top_logit": float(top[-1]),
                   "final_common_logit": float(common[-1]), "final_loss": float(traj.loss[-1]),
                   "final_entropy": float(traj.entropy[-1])}
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        idx = np.unique(np.geomspace(1, steps - 1, 400).astype(int))
        write_table({"iteration": idx, "z_top_distinct": top[idx], "z_common": common[idx],
                     "loss": np.asarray(traj.loss)[idx], "entropy": np.asarray(traj.entropy)[idx]}, folder, "trajectory")
        _plot(os.path.join(folder, "snap.png"), np.asarray(traj.z_distinct), common, decades, lr_z, ratio)
    if not quiet:
        print(f"Scan and Snap, plain SGD, {steps} iterations (lr_Z = {lr_z:g}, lr_Y = {lr_z * ratio:g}):")
        for d in decades:
            print(f"  top distinct logit, t = {d['from']:>6} -> {d['to']:>6}: +{d['increase']:.3f}")
        print(f"  slope in ln t: {slopes['early_slope_per_ln_t']:.4f} over t in {early}, "
              f"{slopes['late_slope_per_ln_t']:.4f} over t in {late} (ratio {slopes['late_over_early']:.2f})")
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _plot(path, z_distinct, common, decades, lr_z, ratio) -> None:
    t = np.arange(1, len(common))
    fig, (a, b) = subplots(1, 2, figsize=(10, 3.8))
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 1, z_distinct.shape[1]))
    for r in range(z_distinct.shape[1]):
        a.plot(t, z_distinct[1:, r], color=colors[r], label="distinct, top P(l|n)" if r == z_distinct.shape[1] - 1
               else ("distinct, lowest P(l|n)" if r == 0 else None))
    a.plot(t, common[1:], "r--", label="common (mean)")
    a.set_xscale("log")
    a.set(xlabel="iteration t (log scale)", ylabel="Z[m, l] (mean over facts)",
          title=f"Plain SGD, lr_Z={lr_z:g}, lr_Y={lr_z * ratio:g}: logits vs ln t")
    a.axhline(0, color="k", linewidth=0.5)
    a.legend(fontsize=7)
    labels = [f"{d['from']}-{d['to']}" for d in decades]
    b.bar(labels, [d["increase"] for d in decades], color="tab:blue")
    b.set(xlabel="decade of iterations", ylabel="increase of the top distinct logit",
          title="Increase per decade (shrinking = snap)")
    save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--steps", type=int, default=20000, help="iterations (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of the data (default 0)")
    parser.add_argument("--lr-z", type=float, default=1.0, help="learning rate of Z (default 1)")
    parser.add_argument("--ratio", type=float, default=10.0, help="lr_Y / lr_Z (default 10)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(args.out, steps=args.steps, seed=args.seed, lr_z=args.lr_z, ratio=args.ratio, quiet=args.quiet)
        return 0

    return run_main("scan_snap_snap", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
