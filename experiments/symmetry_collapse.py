"""Weight-decay collapse: the phase diagram of two symmetric models against γ, with the theory.

Models (`spectrax.dynamics.collapse`, docs/dynamics.md, Setups, "Symmetry and noise"), data x ~ N(0, 1),
y = slope · x + noise · N(0, 1), n samples, through a = E[xy], b = E[x²]:

- product: L = E[(u w x − y)²] + γ (u² + w²); origin stable iff γ > γ_c = |a|; below,
  u w = sign(a) (|a| − γ) / b with |u| = |w|;
- the talk's: L = E[(w² x − y)²] + γ w²; origin stable iff γ > γ_c = 2a; below, w² = (2a − γ) / (2b).

Full-batch GD (optax SGD, float64) from random inits, vmapped over a γ grid and seeds, under
`spectrax.dynamics.loop.run_steps` (`--checkpoint DIR` saves and resumes). Measured: the final
order parameter (|u w|, w²) against the closed form, the balance | |u| − |w| |, the threshold as
the zero of a line fitted through the broken-symmetry branch, and the steps each run takes to get
within 1e-6 of the closed form (critical slowing down near γ_c; near γ = 0 the balance itself
relaxes at rate ~ 4ηγ).

    python experiments/symmetry_collapse.py --out DIR [--checkpoint CKPT] [--steps 40000] [--seeds 8]

Writes `metrics.json`, `sweep.csv` (per model, γ, seed), `summary.csv` (per model, γ) and
`phase.png` (order parameters vs γ with theory and thresholds, balance, relaxation time).
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import collapse as co  # noqa: E402

__all__ = ["build_parser", "main", "run"]

LABELS = {"product": "(u w x − y)² + γ(u²+w²)", "square": "(w² x − y)² + γ w²"}


def run(out: str, config: co.Config, *, checkpoint: str | None = None, quiet: bool = False) -> dict:
    """Sweep γ x seeds for both models (`collapse.simulate`), judge them (`collapse.summarize`) and
    write the results into the new folder `out`."""
    with output_folder(out, []) as folder:
        t0 = time.perf_counter()
        m, traj = co.simulate(config, directory=checkpoint, progress=None if quiet else f"GD x {config.every}")
        seconds = time.perf_counter() - t0
        summary = co.summarize(traj, config, m)
        write_table(summary.runs, folder, "sweep")
        write_table(summary.table, folder, "summary")
        metrics = {"setting": {**dataclasses.asdict(config), "gammas": config.gamma_grid().tolist(),
                               "dtype": "float64"},
                   "moments": {"E_xx": float(m.xx), "E_xy": float(m.xy), "E_yy": float(m.yy)},
                   "models": summary.models, "seconds": seconds}
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        _plot(folder, m, config, summary)
    if not quiet:
        table = {"model": [], "γ_c theory": [], "γ_c measured": [], "slope theory": [], "slope measured": [],
                 "max |err| (|γ-γ_c| >= 0.05)": [], f"runs within {config.tol:g}": []}
        for name in co.MODELS:
            r = summary.models[name]
            for col, val in zip(table, (LABELS[name], r["threshold_theory"], r["threshold_measured"],
                                        r["slope_theory"], r["slope_measured"], r["max_abs_error_far_from_threshold"],
                                        f"{r['runs_within_tol']}/{r['runs']}")):
                table[col].append(val)
        print(markdown(f"Weight-decay collapse: E[xy] = {float(m.xy):.4f}, E[x²] = {float(m.xx):.4f}, "
                       f"{config.gammas} γ x {config.seeds} seeds, {config.steps} GD steps ({seconds:.1f} s)", table,
                       note=f"balance | |u| − |w| | at γ > 0: <= "
                            f"{summary.models['product']['max_balance_gap_gamma_positive']:.2g}"))
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _plot(folder, m, config: co.Config, summary: co.Summary) -> None:
    gammas, order, thresholds, balance, rows = (config.gamma_grid(), summary.order, summary.thresholds,
                                                summary.balance, summary.runs)
    steps, tol = config.steps, config.tol
    fig, axes = subplots(2, 2, figsize=(11, 8))
    labels = {"product": ("|u w|", "L = E[(u w x − y)²] + γ(u² + w²)", "γ_c = |E[xy]|"),
              "square": ("w²", "L = E[(w² x − y)²] + γ w² (the talk's)", "γ_c = 2 E[xy]")}
    fine = np.linspace(gammas[0], gammas[-1], 600)
    for ax, name in zip(axes[0], co.MODELS):
        ylabel, title, th_label = labels[name]
        final = order[name][-1]  # (G, S)
        for s in range(final.shape[1]):
            ax.plot(gammas, final[:, s], "o", color="tab:blue", markersize=3, alpha=0.5,
                    label="GD, final (each seed)" if s == 0 else None)
        gc = thresholds[name]
        solution = co.solution_product if name == "product" else co.solution_square
        with jax.enable_x64(True):
            closed = np.abs(np.asarray(solution(co.Moments(*map(jnp.asarray, m)), jnp.asarray(fine))))
        ax.plot(fine, closed, color="k", linewidth=1.2, label="closed form")
        ax.axvline(gc, color="tab:red", linestyle="--", label=f"{th_label} = {gc:.3f}")
        ax.set(xlabel="weight decay γ", ylabel=f"final {ylabel}", title=title)
        ax.title.set_fontsize(10)
        ax.legend(fontsize=8)
    ax = axes[1, 0]
    pos = gammas > 0
    ax.semilogy(gammas[pos], np.maximum(balance[pos].max(axis=1), 1e-18), "o-", color="tab:purple", markersize=3,
                label="max over seeds, γ > 0")
    if not pos.all():
        ax.semilogy(np.zeros(balance.shape[1]), balance[0], "x", color="tab:orange", markersize=8,
                    label="γ = 0 (charge u² − w² conserved)")
    ax.axvline(thresholds["product"], color="tab:red", linestyle="--", linewidth=1)
    ax.set(xlabel="weight decay γ", ylabel="| |u| − |w| | at the end (floored at 1e-18)",
           title="Balance of the product model")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    settle = {name: np.asarray(rows["steps_to_tol"], float)[np.asarray(rows["model"]) == name].reshape(len(gammas), -1)
              for name in co.MODELS}
    for name, color in zip(co.MODELS, ("tab:blue", "tab:green")):
        ax.semilogy(gammas, np.nanmedian(np.where(np.isnan(settle[name]), np.inf, settle[name]), axis=1), "o-",
                    color=color, markersize=3, label=f"{labels[name][0]}, median over seeds")
        ax.axvline(thresholds[name], color=color, linestyle="--", linewidth=1, label=f"γ_c ({labels[name][0]})")
    ax.axhline(steps, color="0.5", linewidth=0.8, label=f"run length ({steps}); above: not within {tol:g}")
    ax.set(xlabel="weight decay γ", ylabel=f"GD steps to |order − closed form| < {tol:g}",
           title="Critical slowing down at γ_c (and at γ → 0: balancing)")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "phase.png"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--checkpoint", default=None, help="folder to save the sweep to and resume from (default: none)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    add_config_options(parser, co.Config, {
        "n": "data points", "slope": "y = slope x + noise", "noise": "noise std",
        "gammas": "points of the γ grid on [0, 3]", "seeds": "random inits per γ", "lr": "GD learning rate",
        "steps": "GD steps, a multiple of --every", "every": "GD steps per recorded step",
        "init_scale": "std of the init", "seed": "PRNG seed", "tol": "a run has settled within this of the closed form"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    out, checkpoint, quiet = (options.pop(k) for k in ("out", "checkpoint", "quiet"))

    def body() -> int:
        run(out, co.Config(**options), checkpoint=checkpoint, quiet=quiet)
        return 0

    return run_main("symmetry_collapse", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
