"""Sharpness and warm-up: GD on rank-1 matrix factorization, constant η against a linear warm-up.

Problem (`spectrax.dynamics.stability`): L(u, v) = ½ ||u vᵀ − M||_F², u, v in R^d, M = s a bᵀ with
s = 1, full-batch GD (optax SGD) in float64. Inits: u, v with i.i.d. N(0, σ²) entries, σ = 1
("large": the sharpness starts near 3dσ², far above the minimum's sqrt(C² + 4s²)) and σ = 0.01
("small": the sharpness starts at s, the origin's saddle, and rises to ~2s). Schedules: constant
η, and a linear warm-up (optax.linear_schedule) from `start_fraction · η` to η over
`warmup_steps`, then η. The sweep runs every (init, schedule, η, seed) as one vmapped GD under
`spectrax.dynamics.loop.run_steps` (`--checkpoint DIR` saves it every chunk and resumes), with the
sharpness λ_max(H) tracked at every step by warm-started power iteration on Hessian-vector
products. A run has converged when its final loss is <= 1e-12 at a minimum with λ_max <= 2/η.

Reported: per init, the largest η below which every constant-η run converges, the same with
warm-up, the initial sharpness λ_0 (median over seeds) and the linear-stability bound 2/λ_0, and
1/s (a minimum's sharpness is >= 2s, so no GD run converges above η = 1/s). The showcase pair
(large init, seed 0, same peak η: constant diverges, warm-up converges) is run again with the
exact Hessian to check the power-iteration sharpness along the way.

    python experiments/stability_warmup.py --out DIR [--checkpoint CKPT] [--steps 5000] [--seeds 8]

Writes `metrics.json`, `sweep.csv` (per init, schedule, η: runs converged / diverged / not
converged / stalled at an unstable minimum, median final loss and sharpness), `runs.csv` (per run),
`seeds.csv` (per init: λ_0, C_0, the largest η each schedule converged at, and the predictions
2/λ_0 and 2/sqrt(C_0² + 4s²)),
`showcase.csv` (loss, sharpness, η_t per step of the pair) and `trajectories.png` (loss and
sharpness vs step with the 2/η line), `sweep.png` (fraction converged vs η, final sharpness vs 2/η),
`sharpness_paths.png` (sharpness falls from a large init, rises from a small one), `seeds.png`.

Measured (defaults; 704 runs, 34 s of GD on 2 CPU cores): see `spectrax.dynamics.stability`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from spectrax.report.plots import save_figure, subplots  # noqa: E402
from experiments._common import add_config_options, markdown, output_folder, run_main, write_table  # noqa: E402

import jax  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import stability as st  # noqa: E402

__all__ = ["build_parser", "main", "run"]


def run(out: str, config: st.Config, *, checkpoint: str | None = None, chunk: int = 1000, quiet: bool = False) -> dict:
    """Run the sweep and the showcase pair (`stability.simulate`, `rerun_exact`), judge them
    (`stability.summarize`, `summarize_showcase`) and write everything into the new folder `out`."""
    etas, init_scales, warmup_steps = np.asarray(config.etas), config.init_scales, config.warmup_steps
    with output_folder(out, []) as folder, jax.enable_x64(True):
        t0 = time.perf_counter()
        sweep = st.simulate(config, directory=checkpoint, chunk=chunk, progress=None if quiet else "GD sweep")
        sweep_seconds = time.perf_counter() - t0
        summary = st.summarize(sweep.trajectory, config, sweep.sharpness_final_exact)
        traj, limits = sweep.trajectory, summary.limits
        write_table(summary.runs, folder, "runs")
        write_table(summary.sweep, folder, "sweep")
        write_table(summary.seeds, folder, "seeds")
        showcase = None
        pick = st.showcase_configs(summary, config)
        if pick is not None:
            eta, pair = pick
            exact = st.rerun_exact(sweep, config, pair, chunk=chunk)
            showcase = st.summarize_showcase(traj, exact, pair, eta, summary)
            loss, sharp, charge = (np.asarray(x) for x in (traj.loss, traj.sharpness, traj.charge))
            write_table({"step": np.arange(config.steps), "loss_constant": loss[:, pair[0]],
                         "loss_warmup": loss[:, pair[1]], "sharpness_constant": sharp[:, pair[0]],
                         "sharpness_warmup": sharp[:, pair[1]], "sharpness_exact_constant": exact.sharpness[:, 0],
                         "sharpness_exact_warmup": exact.sharpness[:, 1], "lr_warmup": np.asarray(traj.lr)[:, pair[1]],
                         "charge_warmup": charge[:, pair[1]]}, folder, "showcase")
            _plot_showcase(folder, traj, exact, pair, eta, warmup_steps, config.sigma)
        metrics = {"setting": {**dataclasses.asdict(config), "dtype": "float64",
                               "problem": "L = 0.5 ||u v^T - M||_F^2, M = s a b^T",
                               "convergence": f"final loss <= {config.tol} and sharpness <= 2/eta"},
                   "limits": limits, "showcase": showcase, "sweep_seconds": sweep_seconds,
                   "outcome_counts": summary.outcome_counts,
                   "final_sharpness_power_vs_exact_max_rel": summary.final_rel_max,
                   "one_over_s": 1 / config.sigma}
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        _plot_sweep(folder, summary.runs, summary.sweep, init_scales, etas, limits, config.sigma)
        # sharpness paths at one constant η well inside every init's stable range, re-run with the
        # dense Hessian: power iteration lags where the top eigenvector turns fast (the small
        # init's escape from the saddle)
        eta_path, chosen = st.paths_configs(summary, config)
        paths = st.rerun_exact(sweep, config, chosen, chunk=chunk)
        _plot_paths(folder, paths, init_scales, config.seeds, eta_path, config.sigma)
        _plot_seeds(folder, summary.seeds, etas, config.sigma)
    if not quiet:
        rows = {"init σ": [], "λ_0 (median)": [], "2/λ_0": [], "η_max constant": [], "η_max warm-up": [],
                "1st divergence constant": [], "1st divergence warm-up": [], "median η* constant": [],
                "median η* warm-up": []}
        for scale in init_scales:
            lim = limits[f"{scale:g}"]
            for col, val in zip(rows, (f"{scale:g}", lim["sharpness_initial_median"], lim["two_over_lambda0"],
                                       lim["eta_max_all_constant"], lim["eta_max_all_warmup"],
                                       lim["eta_first_divergence_constant"], lim["eta_first_divergence_warmup"],
                                       lim["eta_star_median_constant"], lim["eta_star_median_warmup"])):
                rows[col].append(val)
        print(markdown(f"Rank-1 factorization, d = {config.d}, GD {config.steps} steps ({sweep_seconds:.1f} s for "
                       f"{summary.code.size} runs)", rows,
                       note="η_max: largest grid η at which every seed converged; η*: per seed, the largest "
                            f"grid η it converged at; 1/s = {1 / config.sigma:g} bounds every run (a minimum's "
                            "sharpness is >= 2s)."))
        if showcase:
            print(f"showcase η = {showcase['eta']:g}: constant {showcase['outcome'][0]} (step "
                  f"{showcase['diverged_at_step']}), warm-up {showcase['outcome'][1]}; sharpness "
                  f"{showcase['sharpness_initial']:.3g} -> {showcase['sharpness_final_warmup']:.4g} "
                  f"(2/η = {2 / showcase['eta']:.4g}); power iteration vs exact Hessian: max rel. diff "
                  f"{showcase['power_vs_exact_max_rel']:.2g}")
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _plot_showcase(folder: str, traj, exact, pair, eta: float, warmup_steps: int, sigma: float) -> None:
    t = np.arange(len(traj.loss))
    loss, power, lr = (np.asarray(x)[:, pair] for x in (traj.loss, traj.sharpness, traj.lr))
    sharp = np.asarray(exact.sharpness)
    charge = np.asarray(traj.charge)[:, pair[1]]
    fig, (ax1, ax2) = subplots(1, 2, figsize=(12, 4.5))
    colors = ("tab:red", "tab:blue")
    for j, label in enumerate(("constant η", f"warm-up ({warmup_steps} steps)")):
        ax1.semilogy(t, loss[:, j], color=colors[j], label=label)
        ax2.semilogy(t, sharp[:, j], color=colors[j], linewidth=2, alpha=0.6, label=f"λ_max(H) exact, {label}")
    ax2.semilogy(t, power[:, 1], color="k", linewidth=0.7, label="λ_max by power iteration (tracked), warm-up")
    stop = int(np.argmax(np.isnan(loss[:, 0])))
    if stop > 0:
        ax1.plot(stop - 1, loss[stop - 1, 0], "x", color=colors[0], markersize=10, mew=2)
        ax1.annotate("diverged", (stop - 1, loss[stop - 1, 0]), textcoords="offset points", xytext=(8, -4),
                     color=colors[0])
        ax2.plot(stop - 1, sharp[stop - 1, 0], "x", color=colors[0], markersize=10, mew=2)
    ax1.set(xlabel="GD step", ylabel="loss ½||u vᵀ − M||² (log)", title=f"Loss at peak η = {eta:g}")
    ax1.set_xscale("symlog", linthresh=100)
    ax1.set_xlim(0, len(t))
    ax1.legend()
    ax2.axhline(2 / eta, color="k", linestyle="--", label="2/η (stability threshold)")
    ax2.plot(t, 2 / lr[:, 1], color="0.4", linestyle=":", label="2/η_t (warm-up)")
    ax2.plot(t, np.asarray(st.minimum_sharpness(charge, sigma)), color="tab:green", linewidth=1,
             label="sqrt(C_t² + 4s²): the minimum with charge C_t")
    ax2.set_xscale("symlog", linthresh=100)
    ax2.set_xlim(0, len(t))
    ax2.set(xlabel="GD step", ylabel="sharpness (log)", title="Sharpness vs the threshold 2/η",
            ylim=(0.5 * min(np.nanmin(sharp), 2 / eta), 2 * np.nanmax(sharp)))
    ax2.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "trajectories.png"))


def _plot_sweep(folder, runs, sweep, init_scales, etas, limits, sigma: float) -> None:
    fig, axes = subplots(1, len(init_scales) + 1, figsize=(5 * (len(init_scales) + 1), 4))
    n = np.asarray(sweep["converged"]) + np.asarray(sweep["diverged"]) + np.asarray(sweep["not_converged"]) + \
        np.asarray(sweep["unstable_stall"])
    styles = {"constant": ("tab:red", "o"), "warmup": ("tab:blue", "s")}
    dashes = {"constant": "-", "warmup": "--"}
    for ax, scale in zip(axes, init_scales):
        for name in st.SCHEDULES:
            rows = (np.asarray(sweep["init_scale"]) == scale) & (np.asarray(sweep["schedule"]) == name)
            color, marker = styles[name]
            ax.plot(etas, np.asarray(sweep["converged"])[rows] / n[rows], marker=marker, color=color,
                    linestyle=dashes[name], label=f"{name}: converged")
            ax.plot(etas, np.asarray(sweep["diverged"])[rows] / n[rows], marker=marker, color=color, linestyle=":",
                    mfc="none", label=f"{name}: diverged")
        lim = limits[f"{scale:g}"]
        ax.axvline(lim["two_over_lambda0"], color="k", linestyle="--", linewidth=1, label="2/λ_0 (sharpness at init)")
        ax.axvline(1 / sigma, color="tab:green", linestyle="--", linewidth=1, label="1/s (balanced minimum)")
        ax.set_xscale("log")
        ax.set(xlabel="peak learning rate η", ylabel="fraction of seeds", ylim=(-0.05, 1.05),
               title=f"init σ = {scale:g}: λ_0 ≈ {lim['sharpness_initial_median']:.3g}")
        ax.legend(fontsize=7, loc="center left")
    ax = axes[-1]
    ok = np.asarray(runs["outcome"]) == "converged"
    for scale, marker in zip(init_scales, "o^v<>"):
        for name in st.SCHEDULES:
            sel = ok & (runs["init_scale"] == scale) & (np.asarray(runs["schedule"]) == name)
            ax.scatter(runs["eta"][sel], runs["sharpness_final"][sel], s=14, marker=marker, color=styles[name][0],
                       alpha=0.6, label=f"σ = {scale:g}, {name}")
    grid = np.geomspace(etas[0], etas[-1], 100)
    ax.plot(grid, 2 / grid, color="k", linestyle="--", label="2/η")
    ax.axhline(2 * sigma, color="tab:green", linestyle="--", linewidth=1, label="2s (balanced minimum)")
    ax.set(xscale="log", yscale="log", xlabel="peak learning rate η", ylabel="final sharpness (converged runs)",
           title="Converged runs sit below 2/η")
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "sweep.png"))


def _plot_paths(folder, paths, init_scales, seeds, eta, sigma: float) -> None:
    """Sharpness (dense Hessian) vs step at one constant η, every seed of every init: falls or rises."""
    sharp, charge = np.asarray(paths.sharpness), np.asarray(paths.charge)
    t = np.arange(sharp.shape[0])
    fig, ax = subplots(figsize=(6.5, 4.2))
    colors = matplotlib.colormaps["tab10"]
    for i, scale in enumerate(init_scales):
        for j in range(seeds):
            c = i * seeds + j
            ax.plot(t, sharp[:, c], color=colors(i), linewidth=1.2, label=f"init σ = {scale:g}" if j == 0 else None)
            ax.plot(t, np.asarray(st.minimum_sharpness(charge[:, c], sigma)), color=colors(i), linestyle=":",
                    linewidth=1, label="sqrt(C_t² + 4s²)" if j == 0 else None)
    ax.axhline(2 / eta, color="k", linestyle="--", label=f"2/η = {2 / eta:.3g}")
    ax.axhline(sigma, color="0.5", linewidth=0.8, label="s (saddle at the origin)")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(0, len(t))
    ax.set(yscale="log", xlabel="GD step", ylabel="sharpness λ_max(H) (dense Hessian)",
           title=f"Constant η = {eta:g}: sharpness falls from a large init, rises from a small one")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "sharpness_paths.png"))


def _plot_seeds(folder, per_seed, etas, sigma: float) -> None:
    """Per seed, the largest converging η against the sharpness predictions (y = x: the prediction)."""
    fig, ax = subplots(figsize=(5.5, 4.5))
    markers = "o^v<>"
    for n, scale in enumerate(np.unique(per_seed["init_scale"])[::-1]):
        sel = per_seed["init_scale"] == scale
        ax.scatter(per_seed["two_over_lambda0"][sel], per_seed["eta_star_constant"][sel], marker=markers[n],
                   color="tab:red", alpha=0.7, label=f"σ = {scale:g}, constant vs 2/λ_0")
        ax.scatter(per_seed["two_over_min_sharpness_at_C0"][sel], per_seed["eta_star_warmup"][sel], marker=markers[n],
                   color="tab:blue", alpha=0.7, label=f"σ = {scale:g}, warm-up vs 2/sqrt(C_0² + 4s²)")
    lo, hi = etas[0] / 2, etas[-1] * 2
    ax.plot([lo, hi], [lo, hi], color="k", linewidth=0.8, label="η* = prediction")
    ax.axhline(1 / sigma, color="tab:green", linestyle="--", linewidth=1, label="1/s")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="predicted η limit (from the init)",
           ylabel="η*: largest grid η that converged",
           title="Per seed: the η limit against the sharpness at init")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "seeds.png"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--checkpoint", default=None,
                        help="folder to save the sweep to after every chunk and resume from (default: none)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    add_config_options(parser, st.Config, {
        "d": "u, v in R^d", "steps": "GD steps", "warmup_steps": "length of the linear warm-up",
        "start_fraction": "warm-up starts at this fraction of the peak η", "seeds": "inits per configuration",
        "etas": "comma-separated peak learning rates", "init_scales": "std of the init entries",
        "power_iters": "warm-started power iterations per step and phase", "seed": "PRNG seed",
        "showcase_eta": "peak η of the constant vs warm-up figure (if seed 0 does not diverge constant and "
                        "converge warmed up there, the largest grid η where it does)",
        "sigma": "the target's singular value s", "tol": "a run converged with final loss at most this"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    out, checkpoint, quiet = (options.pop(k) for k in ("out", "checkpoint", "quiet"))

    def body() -> int:
        run(out, st.Config(**options), checkpoint=checkpoint, quiet=quiet)
        return 0

    return run_main("stability_warmup", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
