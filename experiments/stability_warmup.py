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
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import stability as st  # noqa: E402
from spectrax.dynamics.loop import run_steps  # noqa: E402

__all__ = ["DEFAULT_ETAS", "main", "run"]

DEFAULT_ETAS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
                0.9, 1.0, 1.1, 1.2, 1.5)
SCHEDULES = ("constant", "warmup")
SIGMA = 1.0  # the target's singular value s
TOL = 1e-12


def _grid(init_scales, etas, seeds, start_fraction):
    """Flattened config axis, ordered (init, schedule, η, seed)."""
    shape = (len(init_scales), len(SCHEDULES), len(etas), seeds)
    i, k, e, s = (a.ravel() for a in np.indices(shape))
    fracs = np.where(k == 0, 1.0, start_fraction)
    return shape, i, k, e, s, np.asarray(etas, np.float64)[e], fracs


def _largest(etas: np.ndarray, ok: np.ndarray) -> float:
    """Largest η of the grid with ok (`(E,)` bool); nan if none."""
    return float(etas[np.flatnonzero(ok)[-1]]) if ok.any() else float("nan")


def run(out: str, *, d: int = 16, steps: int = 5000, warmup_steps: int = 200, start_fraction: float = 0.02,
        seeds: int = 8, etas: Sequence[float] = DEFAULT_ETAS, init_scales: Sequence[float] = (1.0, 0.01),
        power_iters: int = 5, seed: int = 0, showcase_eta: float = 0.5, checkpoint: str | None = None,
        chunk: int = 1000, quiet: bool = False) -> dict:
    """Run the sweep and the showcase pair; write everything into the new folder `out`."""
    etas = np.asarray(sorted(etas), np.float64)
    if power_iters < 1:
        raise ValueError("need power_iters >= 1")
    if d < 2 or steps < 2 or seeds < 1 or not 1 <= warmup_steps < steps or not 0 < start_fraction <= 1:
        raise ValueError("need d >= 2, steps >= 2, seeds >= 1, 1 <= warmup_steps < steps, 0 < start_fraction <= 1")
    if len(etas) < 2 or etas[0] <= 0:
        raise ValueError("need at least two positive learning rates")
    settings = {"d": d, "warmup_steps": warmup_steps, "start_fraction": start_fraction, "seeds": seeds,
                "etas": etas.tolist(), "init_scales": list(map(float, init_scales)), "power_iters": power_iters,
                "seed": seed, "sigma": SIGMA, "dtype": "float64"}
    with output_folder(out, []) as folder, jax.enable_x64(True):
        key_target, key_init, key_power = jax.random.split(jax.random.key(seed), 3)
        target = st.make_target(key_target, d, d, SIGMA, jnp.float64)
        shape, ii, kk, ee, ss, peaks, fracs = _grid(init_scales, etas, seeds, start_fraction)
        # one draw per seed, scaled per init: the small init is the large one shrunk
        base = jax.vmap(lambda s: st.init_factors(jax.random.fold_in(key_init, s), d, d, 1.0, jnp.float64))(
            jnp.arange(seeds))
        scales = jnp.asarray(np.asarray(init_scales, np.float64)[ii])
        params = st.Factors(base.u[ss] * scales[:, None], base.v[ss] * scales[:, None])
        peaks_j, fracs_j = jnp.asarray(peaks), jnp.asarray(fracs)
        state = st.init_state(params, target, peaks_j, fracs_j, warmup_steps, key_power)
        step = st.make_step(target, peaks_j, fracs_j, warmup_steps, power_iters=power_iters)
        t0 = time.perf_counter()
        final, traj = run_steps(step, state, steps, chunk=chunk, directory=checkpoint, settings=settings,
                                progress=None if quiet else "GD sweep")
        sweep_seconds = time.perf_counter() - t0
        code = np.asarray(st.outcome(jax.tree.map(jnp.asarray, traj), tol=TOL))
        loss, sharp, charge = (np.asarray(x) for x in (traj.loss, traj.sharpness, traj.charge))
        # the tracked (power-iteration) sharpness against the dense Hessian at every run's end point;
        # compared on runs at a fixed point only (the record is taken before the last update, and
        # runs that have not converged may sit on a period-2 orbit)
        exact_final = np.asarray(jax.vmap(lambda p: st.sharpness_exact(lambda q: st.loss_fn(q, target), p))(
            final.params))
        alive, fixed = code != 2, (code == 1) | (code == 3)
        final_rel = np.abs(sharp[-1, fixed] - exact_final[fixed]) / np.abs(exact_final[fixed])
        runs = {"init_scale": np.asarray(init_scales, np.float64)[ii], "schedule": np.asarray(SCHEDULES)[kk],
                "eta": peaks, "seed": ss, "outcome": np.asarray(st.OUTCOMES)[code],
                "final_loss": loss[-1], "max_loss": np.nanmax(loss, axis=0), "sharpness_initial": sharp[0],
                "sharpness_final": sharp[-1], "sharpness_final_exact": np.where(alive, exact_final, np.nan),
                "two_over_eta": 2 / peaks, "charge_initial": charge[0],
                "charge_final": charge[-1],
                "minimum_sharpness_final": np.asarray(st.minimum_sharpness(jnp.asarray(charge[-1]), SIGMA))}
        write_table(runs, folder, "runs")

        grid = code.reshape(shape)
        sweep, limits = {k: [] for k in ("init_scale", "schedule", "eta", "converged", "diverged",
                                          "not_converged", "unstable_stall", "final_loss_median",
                                          "sharpness_initial_median", "sharpness_final_median", "two_over_eta")}, {}
        cfg = np.arange(code.size).reshape(shape)
        for i, scale in enumerate(init_scales):
            for k, name in enumerate(SCHEDULES):
                for e, eta in enumerate(etas):
                    idx = cfg[i, k, e]
                    counts = np.bincount(grid[i, k, e], minlength=4)
                    alive = code[idx] != 2
                    sweep["init_scale"].append(scale)
                    sweep["schedule"].append(name)
                    sweep["eta"].append(eta)
                    for c, col in enumerate(("not_converged", "converged", "diverged", "unstable_stall")):
                        sweep[col].append(int(counts[c]))
                    sweep["final_loss_median"].append(float(np.median(loss[-1, idx])) if alive.all() else float("nan"))
                    sweep["sharpness_initial_median"].append(float(np.median(sharp[0, idx])))
                    sweep["sharpness_final_median"].append(float(np.median(sharp[-1, idx[alive]])) if alive.any()
                                                           else float("nan"))
                    sweep["two_over_eta"].append(2 / eta)
                lam0 = float(np.median(sharp[0, cfg[i, 0, 0]]))
                lim = limits.setdefault(f"{scale:g}", {"sharpness_initial_median": lam0, "two_over_lambda0": 2 / lam0})
                lim[f"eta_max_all_{name}"] = _largest(etas, (grid[i, k] == 1).all(axis=1))
                lim[f"eta_first_divergence_{name}"] = float(etas[np.flatnonzero((grid[i, k] == 2).any(axis=1))[0]]) \
                    if (grid[i, k] == 2).any() else float("nan")
                stars = np.array([_largest(etas, grid[i, k, :, j] == 1) for j in range(seeds)])
                lim[f"eta_star_median_{name}"] = float(np.median(stars[np.isfinite(stars)])) \
                    if np.isfinite(stars).any() else float("nan")
        write_table({k: np.asarray(v) for k, v in sweep.items()}, folder, "sweep")

        # per seed: the largest η each schedule converges at, against the sharpness predictions
        per_seed = {k: [] for k in ("init_scale", "seed", "sharpness_initial", "charge_initial", "two_over_lambda0",
                                    "two_over_min_sharpness_at_C0", "eta_star_constant", "eta_star_warmup")}
        for i, scale in enumerate(init_scales):
            for j in range(seeds):
                c0 = charge[0, cfg[i, 0, 0, j]]
                per_seed["init_scale"].append(scale)
                per_seed["seed"].append(j)
                per_seed["sharpness_initial"].append(sharp[0, cfg[i, 0, 0, j]])
                per_seed["charge_initial"].append(c0)
                per_seed["two_over_lambda0"].append(2 / sharp[0, cfg[i, 0, 0, j]])
                per_seed["two_over_min_sharpness_at_C0"].append(2 / float(st.minimum_sharpness(jnp.asarray(c0), SIGMA)))
                for k, name in enumerate(SCHEDULES):
                    per_seed[f"eta_star_{name}"].append(_largest(etas, grid[i, k, :, j] == 1))
        per_seed = {k: np.asarray(v) for k, v in per_seed.items()}
        write_table(per_seed, folder, "seeds")

        # the showcase (large init, seed 0): `showcase_eta` if there the constant run diverges and the
        # warm-up converges, else the largest grid η where that happens
        big = int(np.argmax(init_scales))
        fits = (grid[big, 0, :, 0] == 2) & (grid[big, 1, :, 0] == 1)
        near = np.flatnonzero(np.isclose(etas, showcase_eta))
        e = int(near[0]) if near.size and fits[near[0]] else (int(np.flatnonzero(fits)[-1]) if fits.any() else None)
        showcase = None
        if e is not None:
            pair = [int(cfg[big, 0, e, 0]), int(cfg[big, 1, e, 0])]
            sub = st.Factors(params.u[jnp.asarray(pair)], params.v[jnp.asarray(pair)])
            exact_step = st.make_step(target, peaks_j[jnp.asarray(pair)], fracs_j[jnp.asarray(pair)], warmup_steps,
                                      method="exact")
            exact_state = st.init_state(sub, target, peaks_j[jnp.asarray(pair)], fracs_j[jnp.asarray(pair)],
                                        warmup_steps, key_power)
            _, exact = run_steps(exact_step, exact_state, steps, chunk=chunk)
            power = sharp[:, pair]
            both = np.isfinite(power) & np.isfinite(exact.sharpness)
            rel = np.abs(power - exact.sharpness)[both] / np.abs(exact.sharpness[both])
            showcase = {"eta": float(etas[e]), "configs": pair,
                        "outcome": [st.OUTCOMES[code[j]] for j in pair],
                        "power_vs_exact_max_rel": float(rel.max()), "power_vs_exact_median_rel": float(np.median(rel)),
                        "power_vs_exact_frac_within_1e-6": float(np.mean(rel < 1e-6)),
                        "diverged_at_step": int(np.argmax(np.isnan(loss[:, pair[0]]))),
                        "sharpness_initial": float(sharp[0, pair[0]]),
                        "sharpness_final_warmup": float(sharp[-1, pair[1]]),
                        "minimum_sharpness_final_warmup": float(runs["minimum_sharpness_final"][pair[1]]),
                        "charge_initial": float(charge[0, pair[1]]), "charge_final_warmup": float(charge[-1, pair[1]])}
            write_table({"step": np.arange(steps), "loss_constant": loss[:, pair[0]], "loss_warmup": loss[:, pair[1]],
                         "sharpness_constant": sharp[:, pair[0]], "sharpness_warmup": sharp[:, pair[1]],
                         "sharpness_exact_constant": exact.sharpness[:, 0],
                         "sharpness_exact_warmup": exact.sharpness[:, 1], "lr_warmup": np.asarray(traj.lr)[:, pair[1]],
                         "charge_warmup": charge[:, pair[1]]}, folder, "showcase")
            _plot_showcase(folder, traj, exact, pair, float(etas[e]), warmup_steps)

        metrics = {"setting": {**settings, "steps": steps, "problem": "L = 0.5 ||u v^T - M||_F^2, M = s a b^T",
                               "convergence": f"final loss <= {TOL} and sharpness <= 2/eta"},
                   "limits": limits, "showcase": showcase, "sweep_seconds": sweep_seconds,
                   "outcome_counts": {name: int((code == c).sum()) for c, name in enumerate(st.OUTCOMES)},
                   "final_sharpness_power_vs_exact_max_rel": float(final_rel.max()) if final_rel.size else None,
                   "one_over_s": 1 / SIGMA}
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        _plot_sweep(folder, runs, sweep, init_scales, etas, limits)
        # sharpness paths at one constant η well inside every init's stable range (η <= 1/λ_0 of the
        # sharpest), re-run with the dense Hessian: power iteration lags where the top eigenvector
        # turns fast (the small init's escape from the saddle)
        bound = min(1 / limits[f"{sc:g}"]["sharpness_initial_median"] for sc in init_scales)
        e_path = max(int(np.searchsorted(etas, bound, side="right")) - 1, 0)
        chosen = jnp.asarray(cfg[:, 0, e_path].ravel())
        sub = st.Factors(params.u[chosen], params.v[chosen])
        _, paths = run_steps(st.make_step(target, peaks_j[chosen], fracs_j[chosen], warmup_steps, method="exact"),
                             st.init_state(sub, target, peaks_j[chosen], fracs_j[chosen], warmup_steps, key_power),
                             steps, chunk=chunk)
        _plot_paths(folder, paths, init_scales, seeds, float(etas[e_path]))
        _plot_seeds(folder, per_seed, etas)
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
        print(markdown(f"Rank-1 factorization, d = {d}, GD {steps} steps ({sweep_seconds:.1f} s for "
                       f"{code.size} runs)", rows,
                       note="η_max: largest grid η at which every seed converged; η*: per seed, the largest "
                            f"grid η it converged at; 1/s = {1 / SIGMA:g} bounds every run (a minimum's sharpness "
                            "is >= 2s)."))
        if showcase:
            print(f"showcase η = {showcase['eta']:g}: constant {showcase['outcome'][0]} (step "
                  f"{showcase['diverged_at_step']}), warm-up {showcase['outcome'][1]}; sharpness "
                  f"{showcase['sharpness_initial']:.3g} -> {showcase['sharpness_final_warmup']:.4g} "
                  f"(2/η = {2 / showcase['eta']:.4g}); power iteration vs exact Hessian: max rel. diff "
                  f"{showcase['power_vs_exact_max_rel']:.2g}")
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _plot_showcase(folder: str, traj, exact, pair, eta: float, warmup_steps: int) -> None:
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
    ax2.plot(t, np.asarray(st.minimum_sharpness(charge, SIGMA)), color="tab:green", linewidth=1,
             label="sqrt(C_t² + 4s²): the minimum with charge C_t")
    ax2.set_xscale("symlog", linthresh=100)
    ax2.set_xlim(0, len(t))
    ax2.set(xlabel="GD step", ylabel="sharpness (log)", title="Sharpness vs the threshold 2/η",
            ylim=(0.5 * min(np.nanmin(sharp), 2 / eta), 2 * np.nanmax(sharp)))
    ax2.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "trajectories.png"))


def _plot_sweep(folder, runs, sweep, init_scales, etas, limits) -> None:
    fig, axes = subplots(1, len(init_scales) + 1, figsize=(5 * (len(init_scales) + 1), 4))
    n = np.asarray(sweep["converged"]) + np.asarray(sweep["diverged"]) + np.asarray(sweep["not_converged"]) + \
        np.asarray(sweep["unstable_stall"])
    styles = {"constant": ("tab:red", "o"), "warmup": ("tab:blue", "s")}
    dashes = {"constant": "-", "warmup": "--"}
    for ax, scale in zip(axes, init_scales):
        for name in SCHEDULES:
            rows = (np.asarray(sweep["init_scale"]) == scale) & (np.asarray(sweep["schedule"]) == name)
            color, marker = styles[name]
            ax.plot(etas, np.asarray(sweep["converged"])[rows] / n[rows], marker=marker, color=color,
                    linestyle=dashes[name], label=f"{name}: converged")
            ax.plot(etas, np.asarray(sweep["diverged"])[rows] / n[rows], marker=marker, color=color, linestyle=":",
                    mfc="none", label=f"{name}: diverged")
        lim = limits[f"{scale:g}"]
        ax.axvline(lim["two_over_lambda0"], color="k", linestyle="--", linewidth=1, label="2/λ_0 (sharpness at init)")
        ax.axvline(1 / SIGMA, color="tab:green", linestyle="--", linewidth=1, label="1/s (balanced minimum)")
        ax.set_xscale("log")
        ax.set(xlabel="peak learning rate η", ylabel="fraction of seeds", ylim=(-0.05, 1.05),
               title=f"init σ = {scale:g}: λ_0 ≈ {lim['sharpness_initial_median']:.3g}")
        ax.legend(fontsize=7, loc="center left")
    ax = axes[-1]
    ok = np.asarray(runs["outcome"]) == "converged"
    for scale, marker in zip(init_scales, "o^v<>"):
        for name in SCHEDULES:
            sel = ok & (runs["init_scale"] == scale) & (np.asarray(runs["schedule"]) == name)
            ax.scatter(runs["eta"][sel], runs["sharpness_final"][sel], s=14, marker=marker, color=styles[name][0],
                       alpha=0.6, label=f"σ = {scale:g}, {name}")
    grid = np.geomspace(etas[0], etas[-1], 100)
    ax.plot(grid, 2 / grid, color="k", linestyle="--", label="2/η")
    ax.axhline(2 * SIGMA, color="tab:green", linestyle="--", linewidth=1, label="2s (balanced minimum)")
    ax.set(xscale="log", yscale="log", xlabel="peak learning rate η", ylabel="final sharpness (converged runs)",
           title="Converged runs sit below 2/η")
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "sweep.png"))


def _plot_paths(folder, paths, init_scales, seeds, eta) -> None:
    """Sharpness (dense Hessian) vs step at one constant η, every seed of every init: falls or rises."""
    sharp, charge = np.asarray(paths.sharpness), np.asarray(paths.charge)
    t = np.arange(sharp.shape[0])
    fig, ax = subplots(figsize=(6.5, 4.2))
    colors = matplotlib.colormaps["tab10"]
    for i, scale in enumerate(init_scales):
        for j in range(seeds):
            c = i * seeds + j
            ax.plot(t, sharp[:, c], color=colors(i), linewidth=1.2, label=f"init σ = {scale:g}" if j == 0 else None)
            ax.plot(t, np.asarray(st.minimum_sharpness(charge[:, c], SIGMA)), color=colors(i), linestyle=":",
                    linewidth=1, label="sqrt(C_t² + 4s²)" if j == 0 else None)
    ax.axhline(2 / eta, color="k", linestyle="--", label=f"2/η = {2 / eta:.3g}")
    ax.axhline(SIGMA, color="0.5", linewidth=0.8, label="s (saddle at the origin)")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(0, len(t))
    ax.set(yscale="log", xlabel="GD step", ylabel="sharpness λ_max(H) (dense Hessian)",
           title=f"Constant η = {eta:g}: sharpness falls from a large init, rises from a small one")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "sharpness_paths.png"))


def _plot_seeds(folder, per_seed, etas) -> None:
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
    ax.axhline(1 / SIGMA, color="tab:green", linestyle="--", linewidth=1, label="1/s")
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
    parser.add_argument("--d", type=int, default=16, help="u, v in R^d (default 16)")
    parser.add_argument("--steps", type=int, default=5000, help="GD steps (default 5000)")
    parser.add_argument("--warmup-steps", type=int, default=200, help="length of the linear warm-up (default 200)")
    parser.add_argument("--start-fraction", type=float, default=0.02,
                        help="warm-up starts at this fraction of the peak η (default 0.02)")
    parser.add_argument("--seeds", type=int, default=8, help="inits per configuration (default 8)")
    parser.add_argument("--showcase-eta", type=float, default=0.5,
                        help="peak η of the constant vs warm-up figure (default 0.5; if seed 0 does not diverge "
                             "constant and converge warmed up there, the largest grid η where it does)")
    parser.add_argument("--etas", default=None, help="comma-separated peak learning rates (default: 0.01..1.5)")
    parser.add_argument("--init-scales", default="1,0.01", help="std of the init entries (default 1,0.01)")
    parser.add_argument("--power-iters", type=int, default=5,
                        help="warm-started power iterations per step and phase (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers (got {text!r})") from None
    if not values or min(values) <= 0:
        raise ValueError(f"{name} must be positive numbers (got {text!r})")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        etas = DEFAULT_ETAS if args.etas is None else _floats(args.etas, "--etas")
        run(args.out, d=args.d, steps=args.steps, warmup_steps=args.warmup_steps,
            start_fraction=args.start_fraction, seeds=args.seeds, etas=etas,
            init_scales=_floats(args.init_scales, "--init-scales"), seed=args.seed, power_iters=args.power_iters,
            showcase_eta=args.showcase_eta, checkpoint=args.checkpoint,
            quiet=args.quiet)
        return 0

    return run_main("stability_warmup", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
