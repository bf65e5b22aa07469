"""Noether charges under GD and SGD: conserved by GD, driven to one noise equilibrium by SGD.

Setting (docs/dynamics.md, Setups, "Symmetry and noise", the Ziyin talk), float64 throughout:

- scalar model (u w x - y)^2, x ~ N(0, 1), y = x + N(0, 1), N = 256 samples; charge C = u^2 - w^2;
  four initializations with C_0 from -2.2 to 3.8; GD (full batch) and SGD (batch 1, rows drawn with
  replacement), lr 0.02, no weight decay. Theory: the exact recursion C_{t+1} = C_t + lr^2 g^T A g;
  GD keeps C_0 to O(lr^2) per step; SGD drives every C to C* = 0 at the rate
  `symmetry.scalar_charge_factor` per step.
- matrix factorization U W, d_in = 4 (input scales 1.5, 1, 0.7, 0.4), d_out = r = 2, N = 512, label
  noise 0.5; charge D = U^T U - W W^T; three initializations; GD and SGD (batch 1), lr 0.02. Theory:
  SGD's D goes to `symmetry.factorization_equilibrium` (spectrum and trace), GD's stays put.
- GD drift vs lr (scalar model, lr 0.004 ... 0.0005): |C - C_0| after 5 steps (theory: ~lr^2) and
  after training to convergence (--drift-steps 16000; ~lr: the per-step lr^2 summed over ~1/lr steps).

    python experiments/noether_charge.py --out DIR [--steps 6000] [--factor-steps 20000]
                                         [--drift-steps 16000] [--checkpoint CKPT] [--quiet]

Writes `metrics.json` (recursion error, GD drift vs lr with fitted slopes, SGD equilibrium spread
against GD's), `scalar_charge.csv`, `factorization_charge.csv`, `gd_drift.csv`, and
`charges.png` (charge vs step, both models) and `gd_drift.png`. With `--checkpoint`, the long runs
save orbax checkpoints there and a rerun with the same options resumes them.
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
from experiments._common import add_config_options, output_folder, run_main, write_table  # noqa: E402

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import symmetry as sy  # noqa: E402

__all__ = ["build_parser", "main", "run"]


def run(out: str, config: sy.Config, *, checkpoint: str | None = None, quiet: bool = False) -> dict:
    """Run the three parts (`symmetry.simulate`), judge them (`symmetry.summarize`) and write
    metrics, tables and figures into the new folder `out`."""
    with output_folder(out, []) as folder:
        runs = sy.simulate(config, directory=checkpoint, progress=None if quiet else "train")
        metrics = sy.summarize(runs, config)
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        _write_tables(folder, runs, config)
        _plots(folder, runs, config)
    if not quiet:
        _summary(metrics, out)
    return metrics


def _write_tables(folder: str, runs: sy.Runs, config: sy.Config) -> None:
    gd, sgd = runs.scalar["gd"].charge, runs.scalar["sgd"].charge
    write_table({"step": np.arange(config.steps // 10) * 10, **{f"gd_init{r}": gd[:, r] for r in range(gd.shape[1])},
                 **{f"sgd_init{r}": sgd[:, r] for r in range(sgd.shape[1])}}, folder, "scalar_charge")
    ftable = {"step": np.arange(config.factor_steps // 20) * 20}
    for name in ("gd", "sgd"):
        eig = np.linalg.eigvalsh(runs.factor[name].charge)
        for r in range(eig.shape[1]):
            for j in range(eig.shape[2]):
                ftable[f"{name}_init{r}_eig{j}"] = eig[:, r, j]
    write_table(ftable, folder, "factorization_charge")
    lrs, inits = np.asarray(sy.DRIFT_LRS), runs.drift_short.shape[1]
    write_table({"lr": np.repeat(lrs, inits), "init": np.tile(np.arange(inits), len(lrs)),
                 "drift_after_5_steps": runs.drift_short.ravel(), "drift_to_convergence": runs.drift_long.ravel()},
                folder, "gd_drift")


def _summary(metrics: dict, out: str) -> None:
    lr, steps = metrics["setting"]["lr"], metrics["setting"]["steps"]
    rec_err = metrics["recursion_error_max"]
    c0 = np.asarray(metrics["scalar"]["initial_charge"])
    predicted = np.asarray(metrics["factorization"]["predicted_eigenvalues"])
    sgd_eigs = np.asarray(metrics["factorization"]["sgd_late_mean_eigenvalues"])
    s, f, g = metrics["scalar"], metrics["factorization"], metrics["gd_drift"]
    print(f"Noether charges (float64, lr {lr}): recursion error max {rec_err:.2e} (relative; check: < 1e-12)")
    print(f"  scalar: C_0 = {np.round(c0, 3).tolist()}; GD after {steps} steps drifts <= "
          f"{s['gd_max_relative_drift']:.2%}; SGD ends at |C| <= {s['sgd_max_abs_final']:.1e} (theory C* = 0)")
    print(f"          SGD log-rate per step {np.round(s['measured_log_factor_per_step'], 5).tolist()} "
          f"vs leading order {s['predicted_log_factor_per_step']:.5f}")
    print(f"  factorization: predicted D* spectrum {np.round(predicted, 3).tolist()} (trace {predicted.sum():.3f}); "
          f"SGD late mean {np.round(sgd_eigs, 3).tolist()}")
    print(f"          spread across inits: SGD {f['sgd_spread_across_inits']:.3f}, GD {f['gd_spread_across_inits']:.3f}")
    print(f"  GD drift vs lr: slope {np.mean(g['slope_after_5_steps']):.2f} after 5 steps (theory 2), "
          f"{np.mean(g['slope_to_convergence']):.2f} to convergence (accumulated: 1)")
    print(f"results in {os.path.abspath(out)}")


def _plots(folder: str, result: sy.Runs, config: sy.Config) -> None:
    t_scalar, t_factor = np.arange(config.steps // 10) * 10, np.arange(config.factor_steps // 20) * 20
    runs, fruns, c0, factor = result.scalar, result.factor, result.initial_charge, result.charge_factor
    predicted, lrs, drift_short, drift_long = (result.predicted, np.asarray(sy.DRIFT_LRS), result.drift_short,
                                               result.drift_long)
    colors = matplotlib.colormaps["tab10"](np.arange(10))
    fig, axes = subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for r in range(len(c0)):
        ax.plot(t_scalar, runs["gd"].charge[:, r], color=colors[r], linestyle="--", linewidth=1.5)
        ax.plot(t_scalar, runs["sgd"].charge[:, r], color=colors[r], linewidth=1.2, alpha=0.9)
        ax.plot(t_scalar, c0[r] * factor ** t_scalar, color="k", linestyle=":", linewidth=0.9)
    ax.axhline(0, color="0.5", linewidth=0.6)
    ax.plot([], [], color="0.3", linestyle="--", label="GD (full batch)")
    ax.plot([], [], color="0.3", label="SGD (batch 1)")
    ax.plot([], [], color="k", linestyle=":", label=r"theory $C_0\,\rho^t$, $\rho = 1 - 4\eta^2\,\overline{e^2x^2}/B$")
    ax.set(xlabel="step", ylabel=r"charge $C = u^2 - w^2$",
           title=r"Scalar model $(uwx-y)^2$: GD keeps $C_0$, SGD $\to C^* = 0$")
    ax.legend(fontsize=8, loc="upper right")
    ax = axes[1]
    for name, style in (("gd", "--"), ("sgd", "-")):
        tr = np.trace(fruns[name].charge, axis1=-2, axis2=-1)
        for r in range(tr.shape[1]):
            ax.plot(t_factor, tr[:, r], color=colors[r], linestyle=style, linewidth=1.2 if name == "sgd" else 1.5,
                    alpha=0.9)
    ax.axhline(predicted.sum(), color="k", linestyle=":", linewidth=1.5,
               label=f"predicted tr D* = {predicted.sum():.3f}")
    ax.plot([], [], color="0.3", linestyle="--", label="GD (full batch)")
    ax.plot([], [], color="0.3", label="SGD (batch 1)")
    ax.set(xlabel="step", ylabel=r"tr $D$,  $D = U^\top U - W W^\top$",
           title="Matrix factorization UW: one SGD equilibrium from every init")
    ax.legend(fontsize=8, loc="best")
    fig.suptitle("Noether charges under GD vs SGD (colours = initializations)")
    save_figure(fig, os.path.join(folder, "charges.png"))

    fig, ax = subplots(figsize=(5.5, 4.2))
    for name, drift, marker in (("after 5 steps", drift_short, "o"), ("to convergence", drift_long, "s")):
        mean = drift.mean(axis=1)
        ax.loglog(lrs, mean, marker=marker, linestyle="-", label=f"GD drift {name}")
        ref = 2 if name == "after 5 steps" else 1
        ax.loglog(lrs, mean[0] * (lrs / lrs[0]) ** ref, color="0.4", linestyle=":", linewidth=1)
        ax.text(lrs[-1], mean[0] * (lrs[-1] / lrs[0]) ** ref, rf"  $\propto\eta^{ref}$", fontsize=8, va="center")
    ax.set_xticks(lrs, [f"{v:g}" for v in lrs])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel=r"learning rate $\eta$", ylabel=r"$|C - C_0|$ (mean over inits)",
           title="GD charge drift: O(η²) per step, O(η) per run")
    ax.legend(fontsize=8)
    save_figure(fig, os.path.join(folder, "gd_drift.png"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--checkpoint", default=None, help="folder for orbax checkpoints of the runs (resumable)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    add_config_options(parser, sy.Config, {
        "steps": "scalar-model steps, multiple of 10", "factor_steps": "factorization steps, multiple of 20",
        "drift_steps": "GD steps of the drift-to-convergence sweep, multiple of 100",
        "lr": "learning rate of the GD/SGD runs", "seed": "PRNG seed of data and minibatches"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    out, checkpoint, quiet = (options.pop(k) for k in ("out", "checkpoint", "quiet"))

    def body() -> int:
        run(out, sy.Config(**options), checkpoint=checkpoint, quiet=quiet)
        return 0

    return run_main("noether_charge", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
