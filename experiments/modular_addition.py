"""CoGO modular addition: a + b = c mod d learned by a 2-layer quadratic network, and its Fourier
solutions (Tian 2024; the setup of docs/dynamics.md, Setups, `spectrax.dynamics.modular`).

d = 23, hidden 512, 90% of the d² pairs for training, full batch, Adam with coupled L2 weight
decay (lr 0.01, wd 5e-5), 10k epochs, every seed in one vmapped compiled call. Theory held
against the run:

- the network generalizes: 100% test accuracy;
- the learned weights are Fourier solutions: Σ_{k≠0} 2d Re r_kkk -> d - 1 (exactly d - 1 for an
  exact solution; weight decay shrinks it to the value `decayed_r_sum` predicts from the norm);
- per frequency, few hidden units carry it: order (#units with |A[k, j]| > 0.05) mostly 4 or 6;
- stronger weight decay changes the order distribution (`--wd-sweep`).

    python experiments/modular_addition.py --out DIR [--d 23] [--seeds 5] [--epochs 10000]
        [--wd 5e-5] [--wd-sweep 0,1e-5,5e-5,2e-4] [--hidden 512] [--lr 0.01]
        [--reduction mean|sum] [--checkpoint DIR] [--quiet]

With `--wd-sweep`, the main wd and the sweep's run together ((wds x seeds) in one vmapped call);
the main results are the runs at `--wd`. `--checkpoint DIR` saves after every 1000 epochs and
resumes an interrupted run with the same settings.

Writes `metrics.json`; `seeds.csv` (per seed: final accuracies, first epoch at 100% test, r_sum
against d - 1 and the decay prediction, active units); `trajectory.csv` (every 10th epoch: loss,
train/test accuracy and r_sum per seed); `orders.csv` (seed x frequency); `order_histogram.csv`;
with a sweep `wd_sweep.csv` and `wd_order_histograms.csv`; figures `accuracy.png`, `r_sum.png`,
`order_histogram.png`, `fourier_A.png` (|A[k, j]| of seed 0, active units sorted by dominant
frequency) and `wd_orders.png`.

Measured, `--d 23 --seeds 5 --epochs 10000 --wd 5e-5 --wd-sweep 0,1e-5,5e-5,2e-4` (20 runs in one
vmapped call, 26.6 min wall on a shared 2-core CPU): 100% test accuracy for every seed from epoch
20-21; orders 4 (32) and 6 (23) only; Σ_k 2d Re r_kkk = 21.02-21.04 against d - 1 = 22 and the
decay prediction 21.09-21.10 (the gap to 22 is weight decay's shrinkage, see the module). Sweep:
wd 0 -> orders 11-20 (r_sum 21.96), 1e-5 -> 4/6 only (21.81), 2e-4 -> collapse to zero (test 4%).
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
from experiments._common import output_folder, run_main, write_table  # noqa: E402

import jax  # noqa: E402
import matplotlib  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import modular as mod  # noqa: E402

__all__ = ["main", "parse_floats", "run"]


def parse_floats(text: str) -> list[float]:
    """'0,1e-5,5e-5' -> [0.0, 1e-05, 5e-05]; refuses empty items and negative values."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise ValueError(f"weight decays must be >= 0 (got {text!r})")
    return values


def _first(flags: np.ndarray) -> int:
    """First epoch from which `flags` (T,) stays true to the end; -1 if it is false at the end."""
    if not flags[-1]:
        return -1
    bad = np.flatnonzero(~flags)
    return int(bad[-1] + 1) if bad.size else 0


def _analyze(params, wd: float, reduction: str, solved: bool) -> dict:
    """Fourier statistics of one run's final weights. The decay prediction assumes the network is
    a (shrunk) solution: NaN for a run that does not reach 100% test accuracy."""
    f = mod.fourier(params)
    d = int(params.w_a.shape[1])
    r = np.asarray(mod.r_diagonal(f))
    predicted = float(mod.decayed_r_sum(params, wd, reduction)) if solved else float("nan")
    return {"orders": np.asarray(mod.frequency_order(f)), "active": int(np.asarray(mod.active_units(f)).sum()),
            "r_sum": float(mod.r_sum(params)), "r_sum_predicted": predicted,
            "two_d_re_r": 2 * d * np.real(r[1:(d - 1) // 2 + 1]), "abs_a": np.abs(np.asarray(f.a)),
            "dominant": np.asarray(mod.dominant_frequency(f)), "is_active": np.asarray(mod.active_units(f))}


def run(out: str, *, d: int = 23, seeds: int = 5, epochs: int = 10_000, wd: float = 5e-5,
        wd_sweep: Sequence[float] | None = None, hidden: int = 512, lr: float = 0.01, reduction: str = "mean",
        checkpoint: str | None = None, quiet: bool = False) -> dict:
    """Train, analyze and write everything into the new folder `out`; returns the metrics."""
    if seeds < 1 or epochs < 1 or hidden < 1 or lr <= 0 or wd < 0:
        raise ValueError("need --seeds >= 1, --epochs >= 1, --hidden >= 1, --lr > 0, --wd >= 0")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"--reduction must be mean or sum (got {reduction!r})")
    wds = [wd] + [w for w in dict.fromkeys(wd_sweep or []) if w != wd]
    seed_ids = list(range(seeds))
    with output_folder(out, []) as folder:
        start = time.perf_counter()
        params, traj, _, _ = mod.run(seed_ids, d=d, hidden=hidden, lr=lr, wds=wds, epochs=epochs,
                                     reduction=reduction, chunk=1000, directory=checkpoint,
                                     progress=None if quiet else f"modular d={d}, {len(wds) * seeds} runs")
        wall = time.perf_counter() - start
        runs = [[_analyze(jax.tree.map(lambda x, r=w * seeds + s: x[r], params), wds[w], reduction,
                          bool(traj.test_acc[-1, w * seeds + s] == 1.0))
                 for s in range(seeds)] for w in range(len(wds))]
        main_runs = runs[0]
        sl = slice(0, seeds)
        train_acc, test_acc, r_traj = traj.train_acc[:, sl], traj.test_acc[:, sl], traj.r_sum[:, sl]
        top = max(8, max(int(a["orders"].max()) for group in runs for a in group))
        hist = mod.order_histogram(np.stack([a["orders"] for a in main_runs]), top)
        per_seed = {
            "seed": np.array(seed_ids), "final_train_acc": train_acc[-1], "final_test_acc": test_acc[-1],
            "epoch_test_100": np.array([_first(test_acc[:, s] == 1.0) for s in range(seeds)]),
            "r_sum": np.array([a["r_sum"] for a in main_runs]), "d_minus_1": np.full(seeds, d - 1),
            "r_sum_decay_prediction": np.array([a["r_sum_predicted"] for a in main_runs]),
            "active_units": np.array([a["active"] for a in main_runs]),
            "frac_order_4_or_6": np.array([np.isin(a["orders"], (4, 6)).mean() for a in main_runs]),
        }
        write_table(per_seed, folder, "seeds")
        keep = np.unique(np.r_[np.arange(0, epochs, 10), epochs - 1])
        table = {"epoch": keep}
        for s in seed_ids:
            table |= {f"loss_seed{s}": traj.train_loss[keep, s], f"train_acc_seed{s}": train_acc[keep, s],
                      f"test_acc_seed{s}": test_acc[keep, s], f"r_sum_seed{s}": r_traj[keep, s]}
        write_table(table, folder, "trajectory")
        k = np.arange(1, (d - 1) // 2 + 1)
        write_table({"seed": np.repeat(seed_ids, len(k)), "frequency": np.tile(k, seeds),
                     "order": np.concatenate([a["orders"] for a in main_runs]),
                     "two_d_re_r_kkk": np.concatenate([a["two_d_re_r"] for a in main_runs])}, folder, "orders")
        write_table({"order": np.arange(top + 1), "count": hist}, folder, "order_histogram")
        sweep = None
        if wd_sweep:
            order_wds = sorted(wds)
            hists = {w: mod.order_histogram(np.stack([a["orders"] for a in runs[wds.index(w)]]), top)
                     for w in order_wds}
            sweep_rows = {
                "wd": np.array(order_wds),
                "mean_test_acc": np.array([traj.test_acc[-1, wds.index(w) * seeds:][:seeds].mean() for w in order_wds]),
                "mean_r_sum": np.array([np.mean([a["r_sum"] for a in runs[wds.index(w)]]) for w in order_wds]),
                "mean_r_sum_decay_prediction": np.array(  # NaN where some seed is not a solution
                    [np.mean([a["r_sum_predicted"] for a in runs[wds.index(w)]]) for w in order_wds]),
                "mean_active_units": np.array([np.mean([a["active"] for a in runs[wds.index(w)]]) for w in order_wds]),
                "frac_order_4_or_6": np.array([(hists[w][[4, 6]].sum() / hists[w].sum()) for w in order_wds]),
                "mean_order": np.array([np.mean([a["orders"].mean() for a in runs[wds.index(w)]]) for w in order_wds]),
            }
            write_table(sweep_rows, folder, "wd_sweep")
            write_table({"order": np.arange(top + 1), **{f"count_wd={w:g}": hists[w] for w in order_wds}},
                        folder, "wd_order_histograms")
            sweep = {"rows": {c: v.tolist() for c, v in sweep_rows.items()},
                     "histograms": {f"{w:g}": hists[w].tolist() for w in order_wds}}
        metrics = {
            "setting": {"d": d, "seeds": seeds, "epochs": epochs, "wd": wd, "wd_sweep": list(wd_sweep or []),
                        "hidden": hidden, "lr": lr, "reduction": reduction, "train_pairs": mod.num_train(d),
                        "test_pairs": d * d - mod.num_train(d), "optimizer": "chain(add_decayed_weights(wd), adam(lr))",
                        "order_threshold": mod.THRESHOLD, "train_seconds": wall, "runs": len(wds) * seeds},
            "per_seed": {c: np.asarray(v).tolist() for c, v in per_seed.items()},
            "orders_per_seed": [a["orders"].tolist() for a in main_runs],
            "order_histogram": hist.tolist(),
            "checks": {
                "all_test_acc_100": bool(np.all(test_acc[-1] == 1.0)),
                "d_minus_1": d - 1,
                "r_sum_min": float(per_seed["r_sum"].min()), "r_sum_max": float(per_seed["r_sum"].max()),
                "max_abs_r_sum_minus_d_minus_1": float(np.abs(per_seed["r_sum"] - (d - 1)).max()),
                "max_abs_r_sum_minus_decay_prediction": float(np.abs(per_seed["r_sum"]
                                                                     - per_seed["r_sum_decay_prediction"]).max()),
                "frac_order_4_or_6": float(hist[[4, 6]].sum() / hist.sum()) if top >= 6 else 0.0,
            },
            "wd_sweep": sweep,
        }
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        _plots(folder, traj, seeds, wds, runs, hist, d, epochs, wd, reduction)
    if not quiet:
        c = metrics["checks"]
        print(f"CoGO modular addition, d = {d}, hidden {hidden}, wd {wd:g}, {seeds} seeds, {epochs} epochs "
              f"({wall:.0f} s for {len(wds) * seeds} runs)")
        print(f"  test accuracy at the end: {', '.join(f'{a:.3f}' for a in test_acc[-1])} "
              f"(100% from epoch {', '.join(str(e) for e in per_seed['epoch_test_100'])})")
        print(f"  Σ_k 2d Re r_kkk: {', '.join(f'{r:.3f}' for r in per_seed['r_sum'])} (d - 1 = {d - 1}; "
              f"decay prediction {', '.join(f'{r:.3f}' for r in per_seed['r_sum_decay_prediction'])})")
        print(f"  order histogram (order: count over {seeds} seeds x {(d - 1) // 2} frequencies): "
              + ", ".join(f"{o}: {n}" for o, n in enumerate(hist) if n) + f"; order 4 or 6: {c['frac_order_4_or_6']:.0%}")
        if sweep:
            for w, h in sweep["histograms"].items():
                print(f"  wd {w}: " + ", ".join(f"{o}: {n}" for o, n in enumerate(h) if n))
        print(f"results in {os.path.abspath(out)}")
    return metrics


def _plots(folder, traj, seeds, wds, runs, hist, d, epochs, wd, reduction) -> None:
    t = np.arange(1, epochs + 1)
    colors = matplotlib.colormaps["tab10"](np.arange(seeds) % 10)
    fig, (ax, bx) = subplots(1, 2, figsize=(10, 3.8))
    for s in range(seeds):
        ax.plot(t, traj.train_acc[:, s], color=colors[s], linestyle="--", linewidth=1)
        ax.plot(t, traj.test_acc[:, s], color=colors[s], linewidth=1.2, label=f"seed {s}")
        bx.loglog(t, traj.train_loss[:, s], color=colors[s], linewidth=1, label=f"seed {s}")
    ax.plot([], [], "k--", label="train (dashed)")
    ax.plot([], [], "k-", label="test (solid)")
    ax.set_xscale("log")
    ax.set(xlabel="epoch", ylabel="accuracy", ylim=(-0.02, 1.02), title=f"Accuracy, d = {d}, wd = {wd:g}")
    ax.legend(fontsize=7, loc="center right")
    m = (d - 1) / d**2 * (d if reduction == "sum" else 1)
    bx.axhline(m, color="k", linestyle=":", linewidth=0.8, label="zero network")
    rho = np.nanmean([a["r_sum_predicted"] for a in runs[0]]) / (d - 1)
    if np.isfinite(rho):  # the floor of a solution shrunk by the decay: m (1 - ρ)²
        bx.axhline(m * (1 - rho) ** 2, color="r", linestyle=":", linewidth=1.2,
                   label=f"decay prediction m(1-ρ)², ρ = {rho:.3f}")
    bx.set(xlabel="epoch", ylabel=f"train MSE ({reduction}, log)", title="Training loss")
    bx.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "accuracy.png"))

    fig, (ax, bx) = subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    for s in range(seeds):
        ax.plot(t, traj.r_sum[:, s], color=colors[s], linewidth=1, label=f"seed {s}")
    ax.axhline(d - 1, color="k", linestyle="--", linewidth=1, label=f"d - 1 = {d - 1} (exact solution)")
    pred = np.nanmean([a["r_sum_predicted"] for a in runs[0]])
    ax.axhline(pred, color="r", linestyle=":", linewidth=1.2, label=f"decay prediction ({pred:.2f})")
    ax.set_xscale("log")
    ax.set(xlabel="epoch", ylabel="Σ_k 2d Re r_kkk", ylim=(min(-0.5, ax.get_ylim()[0]), d - 1 + 1.5),
           title="Fourier solution strength")
    ax.legend(fontsize=7, loc="lower right")
    final = [a["r_sum"] for a in runs[0]]
    predicted = [a["r_sum_predicted"] for a in runs[0]]
    bx.scatter(range(seeds), final, color=colors, zorder=3, label="measured")
    bx.scatter(range(seeds), predicted, marker="_", s=200, color="r", zorder=2, label="decay prediction")
    bx.axhline(d - 1, color="k", linestyle="--", linewidth=1, label="d - 1")
    lo = min(min(final), min(predicted), d - 1)
    bx.set(xlabel="seed", ylabel="final Σ_k 2d Re r_kkk", xticks=range(seeds),
           ylim=(lo - 0.3 * max(d - 1 - lo, 0.3), d - 1 + 0.3 * max(d - 1 - lo, 0.3)),
           title=f"Epoch {epochs}")
    bx.legend(fontsize=7)
    save_figure(fig, os.path.join(folder, "r_sum.png"))

    fig, ax = subplots(figsize=(5.5, 3.6))
    orders = np.arange(len(hist))
    bars = ax.bar(orders, hist, color=["tab:orange" if o in (4, 6) else "tab:blue" for o in orders])
    ax.bar_label(bars, labels=[str(n) if n else "" for n in hist], fontsize=7)
    ax.set(xlabel="solution order (#units with |A[k, j]| > 0.05)", ylabel="count (frequencies x seeds)",
           title=f"Order per frequency, d = {d}, wd = {wd:g} (orange: 4, 6)")
    _integer_axes(ax, orders, hist)
    save_figure(fig, os.path.join(folder, "order_histogram.png"))

    a = runs[0][0]
    units = np.flatnonzero(a["is_active"])
    units = units[np.lexsort((-a["abs_a"][a["dominant"][units], units], a["dominant"][units]))]
    fig, ax = subplots(figsize=(max(5.0, 0.12 * len(units) + 2), 4.2))
    im = ax.imshow(a["abs_a"][:, units], aspect="auto", cmap="magma", interpolation="nearest")
    ax.set(xlabel=f"active hidden unit (sorted by dominant frequency; {len(units)} of {a['abs_a'].shape[1]})",
           ylabel="frequency k", title=f"|A[k, j]| of seed 0 (d = {d}; rows k and d - k mirror)")
    ax.set_yticks(range(0, d, 2))
    fig.colorbar(im, ax=ax, label="|A[k, j]|")
    save_figure(fig, os.path.join(folder, "fourier_A.png"))

    if len(wds) > 1:
        order_wds = sorted(wds)
        hist_all = mod.order_histogram(np.stack([r["orders"] for group in runs for r in group]), len(hist) - 1)
        fig, axes = subplots(1, len(order_wds), figsize=(3.2 * len(order_wds), 3.3), sharey=True)
        for ax, w in zip(np.atleast_1d(axes), order_wds):
            i = wds.index(w)
            acc = float(traj.test_acc[-1, i * seeds:(i + 1) * seeds].mean())
            h = mod.order_histogram(np.stack([r["orders"] for r in runs[i]]), len(hist) - 1)
            bars = ax.bar(orders, h, color=["tab:orange" if o in (4, 6) else "tab:blue" for o in orders])
            ax.bar_label(bars, labels=[str(n) if n else "" for n in h], fontsize=7)
            ax.set(xlabel="solution order", title=f"wd = {w:g} (test acc {acc:.0%})")
            _integer_axes(ax, orders, hist_all)
        np.atleast_1d(axes)[0].set_ylabel("count (frequencies x seeds)")
        fig.suptitle(f"Effect of weight decay on the order distribution (d = {d}, {seeds} seeds)")
        save_figure(fig, os.path.join(folder, "wd_orders.png"))


def _integer_axes(ax, orders: np.ndarray, counts: np.ndarray) -> None:
    """Integer ticks, x limited to the orders that occur (at least 0..8)."""
    top = max(8, int(np.flatnonzero(counts).max(initial=0)))
    ax.set_xlim(-0.7, top + 0.7)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, nbins=min(top + 1, 12)))
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--d", type=int, default=23, help="modulus, odd (default 23)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds: split and init (default 5)")
    parser.add_argument("--epochs", type=int, default=10_000, help="full-batch epochs (default 10000)")
    parser.add_argument("--wd", type=float, default=5e-5, help="coupled L2 weight decay (default 5e-5)")
    parser.add_argument("--wd-sweep", default=None, help="comma-separated weight decays, e.g. 0,1e-5,5e-5,2e-4")
    parser.add_argument("--hidden", type=int, default=512, help="hidden units (default 512)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default 0.01)")
    parser.add_argument("--reduction", default="mean", choices=("mean", "sum"),
                        help="MSE over (pairs, outputs) (mean, default: the documented setup) or summed over outputs (sum: the paper's ℓ)")
    parser.add_argument("--checkpoint", default=None, help="orbax checkpoint folder: save every 1000 epochs, resume")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        sweep = parse_floats(args.wd_sweep) if args.wd_sweep else None
        run(args.out, d=args.d, seeds=args.seeds, epochs=args.epochs, wd=args.wd, wd_sweep=sweep, hidden=args.hidden,
            lr=args.lr, reduction=args.reduction, checkpoint=args.checkpoint, quiet=args.quiet)
        return 0

    return run_main("modular_addition", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
