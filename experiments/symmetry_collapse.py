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
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from spectrax.report.plots import save_figure, subplots  # noqa: E402
from experiments._common import markdown, output_folder, run_main, write_table  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import collapse as co  # noqa: E402
from spectrax.dynamics.loop import run_steps  # noqa: E402

__all__ = ["main", "run", "settle_step"]

TOL = 1e-6
MODELS = ("product", "square")


def settle_step(error: np.ndarray, tol: float, every: int) -> np.ndarray:
    """GD steps until `error` `(T, ...)` (recorded every `every` steps) falls below tol for good;
    NaN where it never does."""
    ok = error < tol
    stays = np.flip(np.cumprod(np.flip(ok, 0), axis=0), 0).astype(bool)  # ok from here to the end
    first = np.argmax(stays, axis=0)
    return np.where(stays.any(axis=0), (first + 1) * every, np.nan)


def run(out: str, *, n: int = 1000, slope: float = 1.0, noise: float = 0.5, gammas: Sequence[float] | None = None,
        seeds: int = 8, lr: float = 0.05, steps: int = 40000, every: int = 100, init_scale: float = 0.5,
        seed: int = 0, checkpoint: str | None = None, quiet: bool = False) -> dict:
    """Sweep γ x seeds for both models and write the results into the new folder `out`."""
    if steps < every or steps % every:
        raise ValueError(f"steps must be a positive multiple of {every} (got {steps})")
    if seeds < 1 or n < 2 or lr <= 0 or init_scale <= 0:
        raise ValueError("need seeds >= 1, n >= 2, lr > 0, init_scale > 0")
    gammas = np.linspace(0.0, 3.0, 121) if gammas is None else np.asarray(sorted(gammas), np.float64)
    if gammas[0] < 0:
        raise ValueError("γ must be >= 0")
    settings = {"n": n, "slope": slope, "noise": noise, "gammas": gammas.tolist(), "seeds": seeds, "lr": lr,
                "every": every, "init_scale": init_scale, "seed": seed, "dtype": "float64"}
    with output_folder(out, []) as folder, jax.enable_x64(True):
        k_data, k_init = jax.random.split(jax.random.key(seed))
        m = co.moments(*co.make_data(k_data, n, slope=slope, noise=noise, dtype=jnp.float64))
        g = jnp.asarray(gammas)
        state = co.init_state(k_init, g, seeds, scale=init_scale, lr=lr)
        step = co.make_step(m, g, lr=lr, inner_steps=every)
        t0 = time.perf_counter()
        _, traj = run_steps(step, state, steps // every, chunk=max(1, (steps // every) // 4), directory=checkpoint,
                            settings=settings, progress=None if quiet else f"GD x {every}")
        seconds = time.perf_counter() - t0
        traj = jax.tree.map(np.asarray, traj)
        a, b = float(m.xy), float(m.xx)
        theory = {"product": np.abs(np.asarray(co.solution_product(m, g))),
                  "square": np.asarray(co.solution_square(m, g))}
        order = {"product": np.abs(traj.u * traj.w), "square": traj.v ** 2}  # (T, G, S)
        thresholds = {"product": float(co.threshold_product(m)), "square": float(co.threshold_square(m))}
        slopes = {"product": -1 / b, "square": -1 / (2 * b)}
        balance = np.abs(np.abs(traj.u[-1]) - np.abs(traj.w[-1]))  # (G, S)
        sign_ok = np.all(np.sign(traj.u[-1] * traj.w[-1])[theory["product"] > 1e-3] == np.sign(a))

        rows = {k: [] for k in ("model", "gamma", "seed", "u", "w", "order", "theory", "abs_error", "balance_gap",
                                "final_loss", "steps_to_tol")}
        summary = {k: [] for k in ("model", "gamma", "order_mean", "theory", "max_abs_error", "max_balance_gap",
                                   "median_steps_to_tol", "threshold")}
        results = {}
        for name in MODELS:
            err = np.abs(order[name] - theory[name][None, :, None])
            settle = settle_step(err, TOL, every)
            final_loss = traj.loss_product[-1] if name == "product" else traj.loss_square[-1]
            for i, gamma in enumerate(gammas):
                for s in range(seeds):
                    rows["model"].append(name)
                    rows["gamma"].append(gamma)
                    rows["seed"].append(s)
                    rows["u"].append(traj.u[-1, i, s] if name == "product" else np.nan)
                    rows["w"].append(traj.w[-1, i, s] if name == "product" else traj.v[-1, i, s])
                    rows["order"].append(order[name][-1, i, s])
                    rows["theory"].append(theory[name][i])
                    rows["abs_error"].append(err[-1, i, s])
                    rows["balance_gap"].append(balance[i, s] if name == "product" else np.nan)
                    rows["final_loss"].append(final_loss[i, s])
                    rows["steps_to_tol"].append(settle[i, s])
                summary["model"].append(name)
                summary["gamma"].append(gamma)
                summary["order_mean"].append(order[name][-1, i].mean())
                summary["theory"].append(theory[name][i])
                summary["max_abs_error"].append(err[-1, i].max())
                summary["max_balance_gap"].append(balance[i].max() if name == "product" else np.nan)
                summary["median_steps_to_tol"].append(np.median(settle[i]))
                summary["threshold"].append(thresholds[name])
            gc = thresholds[name]
            try:
                measured, fitted_slope = co.estimate_threshold(gammas, order[name][-1].mean(axis=1))
            except ValueError:
                measured, fitted_slope = float("nan"), float("nan")
            far = np.abs(gammas - gc) >= 0.05
            results[name] = {"threshold_theory": gc, "threshold_measured": measured,
                             "threshold_abs_error": abs(measured - gc), "slope_theory": slopes[name],
                             "slope_measured": fitted_slope, "max_abs_error": float(err[-1].max()),
                             "max_abs_error_far_from_threshold": float(err[-1][far].max()) if far.any() else None,
                             "runs_within_tol": int((err[-1] < TOL).sum()), "runs": int(err[-1].size),
                             "max_steps_to_tol_far_from_threshold": float(np.nanmax(settle[far])) if far.any() else None}
        results["product"]["max_balance_gap_gamma_positive"] = float(balance[gammas > 0].max()) if (gammas > 0).any() \
            else None
        results["product"]["sign_matches_E_xy"] = bool(sign_ok)
        if gammas[0] == 0:
            charge0 = traj.u[0, 0] ** 2 - traj.w[0, 0] ** 2  # after the first `every` steps
            results["product"]["gamma0_charge_drift_max"] = float(np.abs(traj.charge[-1, 0] - charge0).max())
            results["product"]["gamma0_balance_gap_min"] = float(balance[0].min())
        write_table({k: np.asarray(v) for k, v in rows.items()}, folder, "sweep")
        write_table({k: np.asarray(v) for k, v in summary.items()}, folder, "summary")
        metrics = {"setting": {**settings, "steps": steps, "tol": TOL},
                   "moments": {"E_xx": b, "E_xy": a, "E_yy": float(m.yy)}, "models": results, "seconds": seconds}
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        _plot(folder, m, gammas, order, thresholds, balance, rows, steps)
    if not quiet:
        table = {"model": [], "γ_c theory": [], "γ_c measured": [], "slope theory": [], "slope measured": [],
                 "max |err| (|γ-γ_c| >= 0.05)": [], "runs within 1e-6": []}
        for name, label in zip(MODELS, ("(u w x − y)² + γ(u²+w²)", "(w² x − y)² + γ w²")):
            r = results[name]
            for col, val in zip(table, (label, r["threshold_theory"], r["threshold_measured"], r["slope_theory"],
                                        r["slope_measured"], r["max_abs_error_far_from_threshold"],
                                        f"{r['runs_within_tol']}/{r['runs']}")):
                table[col].append(val)
        print(markdown(f"Weight-decay collapse: E[xy] = {a:.4f}, E[x²] = {b:.4f}, {len(gammas)} γ x {seeds} seeds, "
                       f"{steps} GD steps ({seconds:.1f} s)", table,
                       note=f"balance | |u| − |w| | at γ > 0: <= "
                            f"{results['product']['max_balance_gap_gamma_positive']:.2g}"))
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _plot(folder, m, gammas, order, thresholds, balance, rows, steps) -> None:
    fig, axes = subplots(2, 2, figsize=(11, 8))
    labels = {"product": ("|u w|", "L = E[(u w x − y)²] + γ(u² + w²)", "γ_c = |E[xy]|"),
              "square": ("w²", "L = E[(w² x − y)²] + γ w² (the talk's)", "γ_c = 2 E[xy]")}
    fine = np.linspace(gammas[0], gammas[-1], 600)
    for ax, name in zip(axes[0], MODELS):
        ylabel, title, th_label = labels[name]
        final = order[name][-1]  # (G, S)
        for s in range(final.shape[1]):
            ax.plot(gammas, final[:, s], "o", color="tab:blue", markersize=3, alpha=0.5,
                    label="GD, final (each seed)" if s == 0 else None)
        gc = thresholds[name]
        solution = co.solution_product if name == "product" else co.solution_square
        ax.plot(fine, np.abs(np.asarray(solution(m, jnp.asarray(fine)))), color="k", linewidth=1.2,
                label="closed form")
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
              for name in MODELS}
    for name, color in zip(MODELS, ("tab:blue", "tab:green")):
        ax.semilogy(gammas, np.nanmedian(np.where(np.isnan(settle[name]), np.inf, settle[name]), axis=1), "o-",
                    color=color, markersize=3, label=f"{labels[name][0]}, median over seeds")
        ax.axvline(thresholds[name], color=color, linestyle="--", linewidth=1, label=f"γ_c ({labels[name][0]})")
    ax.axhline(steps, color="0.5", linewidth=0.8, label=f"run length ({steps}); above: not within {TOL:g}")
    ax.set(xlabel="weight decay γ", ylabel=f"GD steps to |order − closed form| < {TOL:g}",
           title="Critical slowing down at γ_c (and at γ → 0: balancing)")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "phase.png"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--checkpoint", default=None, help="folder to save the sweep to and resume from (default: none)")
    parser.add_argument("--steps", type=int, default=40000, help="GD steps, a multiple of 100 (default 40000)")
    parser.add_argument("--seeds", type=int, default=8, help="random inits per γ (default 8)")
    parser.add_argument("--gammas", type=int, default=121, help="points of the γ grid on [0, 3] (default 121)")
    parser.add_argument("--lr", type=float, default=0.05, help="GD learning rate (default 0.05)")
    parser.add_argument("--n", type=int, default=1000, help="data points (default 1000)")
    parser.add_argument("--slope", type=float, default=1.0, help="y = slope x + noise (default 1)")
    parser.add_argument("--noise", type=float, default=0.5, help="noise std (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.gammas < 2:
            raise ValueError("--gammas must be >= 2")
        run(args.out, n=args.n, slope=args.slope, noise=args.noise, gammas=np.linspace(0.0, 3.0, args.gammas),
            seeds=args.seeds, lr=args.lr, steps=args.steps, seed=args.seed, checkpoint=args.checkpoint,
            quiet=args.quiet)
        return 0

    return run_main("symmetry_collapse", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
