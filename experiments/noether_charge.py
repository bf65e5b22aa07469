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
from experiments._common import output_folder, run_main, write_table  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import symmetry as sy  # noqa: E402

__all__ = ["main", "run"]

SCALAR_INITS = [[0.3, 1.5], [0.8, 1.1], [1.0, 0.8], [2.0, 0.4]]
TEACHER = [[1.0, -0.5, 0.3, 0.8], [0.2, 1.2, -0.7, 0.1]]
INPUT_SCALES = [1.5, 1.0, 0.7, 0.4]
FACTOR_SCALES = [0.6, 1.0, 1.6]
DRIFT_LRS = [0.004, 0.002, 0.001, 0.0005]


def _factor_inits(seed: int) -> sy.Factors:
    rng = np.random.default_rng(seed)
    u = np.stack([s * rng.normal(size=(2, 2)) for s in FACTOR_SCALES])
    w = np.stack([rng.normal(size=(2, 4)) / s for s in FACTOR_SCALES])
    return sy.Factors(jnp.asarray(u), jnp.asarray(w))


def _slope(lrs: np.ndarray, drift: np.ndarray) -> float:
    return float(np.polyfit(np.log(lrs), np.log(drift), 1)[0])


def _ckpt(checkpoint: str | None, name: str) -> str | None:
    return None if checkpoint is None else os.path.join(checkpoint, name)


def run(out: str, *, steps: int = 6000, factor_steps: int = 20000, drift_steps: int = 16000, lr: float = 0.02,
        seed: int = 0, checkpoint: str | None = None, quiet: bool = False) -> dict:
    """Run the three parts and write metrics, tables and figures into the new folder `out`."""
    if steps % 10 or factor_steps % 20 or drift_steps % 100 or min(steps, factor_steps, drift_steps) < 100:
        raise ValueError("--steps must be a multiple of 10, --factor-steps of 20, --drift-steps of 100 (all >= 100)")
    progress = None if quiet else "train"
    with output_folder(out, []) as folder:
        metrics = _run(folder, steps, factor_steps, drift_steps, lr, seed, checkpoint, progress)
    if not quiet:
        _summary(metrics, out)
    return metrics


def _run(folder, steps, factor_steps, drift_steps, lr, seed, checkpoint, progress) -> dict:
    with jax.enable_x64(True):
        key = jax.random.key(seed)
        settings = {"seed": seed, "lr": lr, "model": "noether_charge_v1"}
        # --- scalar model
        x, y = sy.scalar_data(jax.random.fold_in(key, 0), 256, dtype=jnp.float64)
        inits = jnp.asarray(SCALAR_INITS, jnp.float64)
        c0 = np.asarray(jax.vmap(sy.scalar_charge)(inits))
        runs = {}
        for name, sampler in (("gd", sy.full_batch(x, y)), ("sgd", sy.minibatches(x, y, 1))):
            _, runs[name] = sy.train(sy.SCALAR, inits, sampler, lr=lr, steps=steps, every=10,
                                     key=jax.random.fold_in(key, 1), directory=_ckpt(checkpoint, f"scalar_{name}"),
                                     settings={**settings, "part": f"scalar_{name}"}, progress=progress)
        factor = float(sy.scalar_charge_factor(x, y, lr=lr, batch_size=1))
        t_scalar = np.arange(steps // 10) * 10
        # --- matrix factorization
        xf, yf = sy.teacher_data(jax.random.fold_in(key, 2), 512, jnp.asarray(TEACHER, jnp.float64),
                                 input_scales=jnp.asarray(INPUT_SCALES, jnp.float64), noise_std=0.5)
        star = sy.factorization_equilibrium(xf, yf, 2)
        predicted = np.linalg.eigvalsh(np.asarray(sy.factorization_charge(star)))
        finits = _factor_inits(seed)
        d0 = np.linalg.eigvalsh(np.asarray(jax.vmap(sy.factorization_charge)(finits)))
        fruns = {}
        for name, sampler in (("gd", sy.full_batch(xf, yf)), ("sgd", sy.minibatches(xf, yf, 1))):
            _, fruns[name] = sy.train(sy.FACTORIZATION, finits, sampler, lr=lr, steps=factor_steps, every=20,
                                      key=jax.random.fold_in(key, 3), directory=_ckpt(checkpoint, f"factor_{name}"),
                                      settings={**settings, "part": f"factor_{name}"}, progress=progress)
        t_factor = np.arange(factor_steps // 20) * 20
        # --- GD drift vs lr: 4 lrs x 4 inits in one vmapped call per horizon
        lrs = np.asarray(DRIFT_LRS)
        sweep_inits = jnp.asarray(np.tile(np.asarray(SCALAR_INITS), (len(lrs), 1)))
        sweep_lr = jnp.asarray(np.repeat(lrs, len(SCALAR_INITS)))
        short, _ = sy.train(sy.SCALAR, sweep_inits, sy.full_batch(x, y), lr=sweep_lr, steps=5, key=key)
        long, long_traj = sy.train(sy.SCALAR, sweep_inits, sy.full_batch(x, y), lr=sweep_lr, steps=drift_steps,
                                   every=100, key=key, progress=progress)
        c_sweep = np.asarray(jax.vmap(sy.scalar_charge)(sweep_inits))
        drift_short = np.abs(np.asarray(jax.vmap(sy.scalar_charge)(short)) - c_sweep).reshape(len(lrs), -1)
        drift_long = np.abs(np.asarray(jax.vmap(sy.scalar_charge)(long)) - c_sweep).reshape(len(lrs), -1)

    # --- summaries
    rec_err = max(float(np.max(r.recursion_error)) for r in (*runs.values(), *fruns.values()))
    half = fruns["sgd"].charge[len(t_factor) // 2:]
    sgd_eigs = np.linalg.eigvalsh(half).mean(axis=0)  # (R, r)
    sgd_trace = np.trace(half, axis1=-2, axis2=-1).mean(axis=0)
    gd_eigs = np.linalg.eigvalsh(fruns["gd"].charge[-1])
    slopes_short = [_slope(lrs, drift_short[:, i]) for i in range(drift_short.shape[1])]
    slopes_long = [_slope(lrs, drift_long[:, i]) for i in range(drift_long.shape[1])]
    metrics = {
        "setting": {"lr": lr, "steps": steps, "factor_steps": factor_steps, "seed": seed, "dtype": "float64",
                    "scalar": {"num": 256, "inits": SCALAR_INITS, "batch": 1},
                    "factorization": {"teacher": TEACHER, "input_scales": INPUT_SCALES, "noise_std": 0.5,
                                      "num": 512, "rank": 2, "init_scales": FACTOR_SCALES, "batch": 1}},
        "recursion_error_max": rec_err,
        "scalar": {
            "initial_charge": c0.tolist(), "gd_final_charge": runs["gd"].charge[-1].tolist(),
            "sgd_final_charge": runs["sgd"].charge[-1].tolist(),
            "gd_max_relative_drift": float(np.max(np.abs(runs["gd"].charge[-1] - c0) / np.abs(c0))),
            "sgd_max_abs_final": float(np.max(np.abs(runs["sgd"].charge[-1]))),
            "predicted_equilibrium": 0.0,
            "predicted_log_factor_per_step": float(np.log(factor)),
            "measured_log_factor_per_step": [
                float(np.polyfit(t_scalar[t_scalar >= steps // 5],
                                 np.log(np.abs(runs["sgd"].charge[t_scalar >= steps // 5, r]) + 1e-300), 1)[0])
                for r in range(len(c0))],
        },
        "factorization": {
            "initial_eigenvalues": d0.tolist(), "predicted_eigenvalues": predicted.tolist(),
            "predicted_trace": float(predicted.sum()),
            "sgd_late_mean_eigenvalues": sgd_eigs.tolist(), "sgd_late_mean_trace": sgd_trace.tolist(),
            "sgd_spread_across_inits": float(np.ptp(sgd_eigs, axis=0).max()),
            "gd_final_eigenvalues": gd_eigs.tolist(), "gd_spread_across_inits": float(np.ptp(gd_eigs, axis=0).max()),
            "sgd_max_error_vs_prediction": float(np.abs(sgd_eigs - predicted).max()),
            "gd_max_relative_drift": float(np.abs(gd_eigs - d0).max() / np.abs(d0).max()),
        },
        "gd_drift": {"lrs": lrs.tolist(), "after_5_steps": drift_short.tolist(),
                     "to_convergence": drift_long.tolist(), "slope_after_5_steps": slopes_short,
                     "slope_to_convergence": slopes_long,
                     "converged_loss_change": float(np.max(np.abs(long_traj.loss[-1] - long_traj.loss[-2])))},
    }
    with open(os.path.join(folder, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=1)
    write_table({"step": t_scalar, **{f"gd_init{r}": runs["gd"].charge[:, r] for r in range(len(c0))},
                 **{f"sgd_init{r}": runs["sgd"].charge[:, r] for r in range(len(c0))}}, folder, "scalar_charge")
    ftable = {"step": t_factor}
    for name in ("gd", "sgd"):
        eig = np.linalg.eigvalsh(fruns[name].charge)
        for r in range(eig.shape[1]):
            for j in range(eig.shape[2]):
                ftable[f"{name}_init{r}_eig{j}"] = eig[:, r, j]
    write_table(ftable, folder, "factorization_charge")
    write_table({"lr": np.repeat(lrs, drift_short.shape[1]), "init": np.tile(np.arange(drift_short.shape[1]), len(lrs)),
                 "drift_after_5_steps": drift_short.ravel(), "drift_to_convergence": drift_long.ravel()},
                folder, "gd_drift")
    _plots(folder, t_scalar, runs, c0, factor, t_factor, fruns, predicted, lrs, drift_short, drift_long)
    return metrics


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


def _plots(folder, t_scalar, runs, c0, factor, t_factor, fruns, predicted, lrs, drift_short, drift_long) -> None:
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
    parser.add_argument("--steps", type=int, default=6000, help="scalar-model steps, multiple of 10 (default 6000)")
    parser.add_argument("--factor-steps", type=int, default=20000,
                        help="factorization steps, multiple of 20 (default 20000)")
    parser.add_argument("--drift-steps", type=int, default=16000,
                        help="GD steps of the drift-to-convergence sweep, multiple of 100 (default 16000)")
    parser.add_argument("--lr", type=float, default=0.02, help="learning rate of the GD/SGD runs (default 0.02)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of data and minibatches (default 0)")
    parser.add_argument("--checkpoint", default=None, help="folder for orbax checkpoints of the runs (resumable)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.lr <= 0:
            raise ValueError("--lr must be > 0")
        run(args.out, steps=args.steps, factor_steps=args.factor_steps, drift_steps=args.drift_steps, lr=args.lr, seed=args.seed,
            checkpoint=args.checkpoint, quiet=args.quiet)
        return 0

    return run_main("noether_charge", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
