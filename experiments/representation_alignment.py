"""Canonical representation alignments during SGD training, against the random-basis null.

Setting (docs/dynamics.md, Setups, the Ziyin talk; model and theory in `spectrax.dynamics.representation`): a
bias-free tanh MLP 16 -> 64 -> 64 -> 8 learns a noisy teacher with a 4-unit hidden layer (label
noise σ = 0.5) by online SGD (lr 0.05, batch 16) with weight decay γ in {0, 1e-3, 3e-3, 1e-2},
3 seeds each (the same init and data stream for a seed at every γ), 40k SGD steps. Every 1000
steps (and at init) the six matrices H, G, Z of every layer are measured on a fixed set of 2048
samples; each alignment is reported beside its random-basis null (the same spectra in
independent Haar-random eigenbases), at every `--null-every`-th record and at the end.

What the theory says (the Ziyin talk): with weight decay and SGD noise the layer reaches a stationary
balance where H, G and Z align (all six alignments -> 1, CRH); without weight decay nothing forces
it; when the CRH is broken the spectra follow power laws λ_h ∝ λ_g^α with α in [-1, 3].

    python experiments/representation_alignment.py --out DIR [--checkpoint CKPT] [--steps 40000]

Writes `metrics.json` (settings, per-γ summaries of the headline layer, checks), `trajectory.csv`
(every record x configuration x layer: losses, six alignments, null mean/std/z where computed),
`final.csv` (the last record: every statistic of `spectrax.spectral.alignment.alignment_table`
with its null), `spectra.csv` (eigenvalues of H_b, G_b of the headline layer at the end),
`alignments.png` (six alignments vs step with null bands), `spectra.png` (λ_h vs λ_g, log-log,
with fitted power laws) and `layers.png` (final z-scores per layer). With `--checkpoint DIR` the
training is saved every `--chunk` records and a rerun resumes.

Findings (defaults, 3 seeds, headline layer 1 = 64 -> 64, final record; null = random-basis mean):
- γ > 0: all six alignments end at 0.73-0.96 against null means 0.05-0.07 (z 33-58). The weight
  alignments (RWA, GWA) need the weight decay: 0.83-0.96 with γ in {1e-3, 3e-3, 1e-2}, but with
  γ = 0 they rise briefly and then decay to 0.26-0.29 (z 5-10). Larger γ gets there faster.
- RGA (H ~ G) does not need weight decay: 0.73 / 0.82 (b / f) at γ = 0, 0.76-0.80 / 0.73-0.75
  with γ > 0 (f-RGA is slightly lower with weight decay). No alignment reaches 1: f-RGA stays
  <= 0.82, GWA <= 0.88, so the CRH holds approximately, not exactly.
- Eq. 7's sign structure does not show: with γ > 0 the fit H_b ≈ c Z_b + c' G_b has c' < 0
  (1.25 Z_b - 0.35 G_b at γ = 1e-2, R² 0.93; G_a ≈ 1.25 Z_a - 0.40 H_a), because G is nearly
  collinear with Z; only at γ = 0 are both coefficients positive (R² 0.55-0.67).
- Power law λ_h ∝ λ_g^α of H_b, G_b: basis-paired α = 1.03-1.22 (R² 0.91-0.94, null R² 0.13),
  the CRH value 1. The rank-paired α over the top 8 (1.08, 1.61, 1.96, 0.94 for γ = 0 ... 1e-2)
  is not a stable exponent: with γ > 0 H_b collapses to rank 4 (the teacher's width) and the fit
  straddles the gap.
- Two alignments are identities, not learning, and the random-basis null cannot see it: the
  first layer's f-RWA is 1.00 because its input is isotropic (H_b = W H_a Wᵀ ≈ W Wᵀ), and the
  last layer's b-GWA is 1.00 because its output gradient is mostly label noise (G_a = Wᵀ G_b W ≈
  σ² Wᵀ W); both show z ~ 50. The output layer's f-RGA/f-GWA sit at the null (z < 1.1).
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
from experiments._common import add_config_options, output_folder, run_main, write_table  # noqa: E402

import matplotlib  # noqa: E402
import matplotlib.lines  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.dynamics import representation as rp  # noqa: E402
from spectrax.spectral import alignment as al  # noqa: E402

__all__ = ["build_parser", "main", "run"]


def run(out: str, config: rp.Config, *, checkpoint: str | None = None, quiet: bool = False) -> dict:
    """Train the sweep (`representation.simulate`), measure the alignments and their nulls
    (`alignment_statistics`), judge them (`summarize`) and write everything into `out`."""
    layer, dims, seeds, weight_decays = config.headline_layer, config.dims, config.seeds, config.weight_decays
    with output_folder(out, []) as folder:
        t0 = time.time()
        result = rp.simulate(config, directory=checkpoint, progress=None if quiet else "training (records)")
        train_s = time.time() - t0
        stats = rp.alignment_statistics(result, config)
        stats_s = time.time() - t0 - train_s
        verdict = rp.summarize(stats, result, config)
        summary, checks = verdict["headline_layer"], verdict["checks"]
        num_rec, num_cfg = result.eval_loss.shape
        sgd_step = np.arange(num_rec) * config.record_every
        wd_of = np.repeat(np.asarray(weight_decays, np.float64), seeds)
        seed_of = np.tile(np.arange(seeds), len(weight_decays))
        _write_tables(folder, result, stats, sgd_step, wd_of, seed_of, layer)
        metrics = {
            "setting": {**config.settings(), "headline_layer": layer, "null_draws": config.null_draws,
                        "null_every": config.null_every, "top_k": config.top_k,
                        "noise_floor_loss": 0.5 * config.noise ** 2 * config.d_out},
            "wall_seconds": {"training": train_s, "statistics": stats_s},
            "headline_layer": summary, "checks": checks,
            "final_by_layer": {str(li): {f"wd={w:g}": {n: float(np.nanmean(np.asarray(stats.finals[li][n])[wd_of == w]))
                                                      for n in (*al.ALIGNMENTS, *[f"{a}_z" for a in al.ALIGNMENTS])}
                                         for w in weight_decays} for li in range(len(result.layers))},
        }
        with open(os.path.join(folder, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1, default=float, allow_nan=True)
        head = result.layers[layer]
        lam_h = np.linalg.eigvalsh(np.asarray(head.h_b[-1], np.float64))[:, ::-1]
        lam_g = np.linalg.eigvalsh(np.asarray(head.g_b[-1], np.float64))[:, ::-1]
        write_table({"weight_decay": np.repeat(wd_of, lam_h.shape[1]), "seed": np.repeat(seed_of, lam_h.shape[1]),
                     "rank": np.tile(np.arange(lam_h.shape[1]), num_cfg), "lambda_h_b": lam_h.ravel(),
                     "lambda_g_b": lam_g.ravel()}, folder, "spectra")
        _plot_alignments(folder, sgd_step, stats.align[layer], stats.null_mean[layer], stats.null_std[layer],
                         stats.null_records, weight_decays, seeds, layer, dims)
        _plot_spectra(folder, lam_h, lam_g, stats.finals[layer], weight_decays, seeds, layer, config.top_k)
        _plot_layers(folder, stats.finals, weight_decays, seeds, dims)
    if not quiet:
        _print(summary, checks, layer, dims, train_s, stats_s, out)
    return metrics


def _write_tables(folder, result: rp.Sweep, stats: rp.Alignments, sgd_step, wd_of, seed_of, layer) -> None:
    """trajectory.csv (every record x configuration x layer) and final.csv (the last record)."""
    num_rec, num_cfg = result.eval_loss.shape
    rows: dict[str, list] = {c: [] for c in ("record", "sgd_step", "weight_decay", "seed", "layer", "train_loss",
                                              "eval_loss")}
    for n in al.ALIGNMENTS:
        rows.update({n: [], f"{n}_null_mean": [], f"{n}_null_std": [], f"{n}_z": []})
    for li in range(len(result.layers)):
        for r in range(num_rec):
            for c in range(num_cfg):
                for name, v in (("record", r), ("sgd_step", sgd_step[r]), ("weight_decay", wd_of[c]),
                                ("seed", seed_of[c]), ("layer", li), ("train_loss", result.train_loss[r, c]),
                                ("eval_loss", result.eval_loss[r, c])):
                    rows[name].append(v)
                for n in al.ALIGNMENTS:
                    obs, mu, sd = stats.align[li][n][r, c], stats.null_mean[li][n][r, c], stats.null_std[li][n][r, c]
                    rows[n].append(obs)
                    rows[f"{n}_null_mean"].append(mu)
                    rows[f"{n}_null_std"].append(sd)
                    rows[f"{n}_z"].append((obs - mu) / sd if sd > 0 else np.nan)
    write_table({k: np.asarray(v) for k, v in rows.items()}, folder, "trajectory")
    final_rows: dict[str, list] = {"weight_decay": [], "seed": [], "layer": []}
    for li, tab in enumerate(stats.finals):
        final_rows["weight_decay"] += list(wd_of)
        final_rows["seed"] += list(seed_of)
        final_rows["layer"] += [li] * num_cfg
        for name, v in tab.items():
            final_rows.setdefault(name, []).extend(np.asarray(v).tolist())
    write_table({k: np.asarray(v) for k, v in final_rows.items()}, folder, "final")


def _colors(n):
    return matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, n))


def _plot_alignments(folder, sgd_step, align, mean, std, null_rec, weight_decays, seeds, layer, dims) -> None:
    fig, axes = subplots(2, 3, figsize=(13, 7), sharex=True, sharey=True)
    colors = _colors(len(weight_decays))
    for ax, n in zip(axes.ravel(), al.ALIGNMENTS):
        for i, (w, col) in enumerate(zip(weight_decays, colors)):
            cfg = slice(i * seeds, (i + 1) * seeds)
            m, s = align[n][:, cfg].mean(axis=1), align[n][:, cfg].std(axis=1)
            ax.plot(sgd_step, m, color=col, linewidth=2, label=f"γ = {w:g}")
            ax.fill_between(sgd_step, m - s, m + s, color=col, alpha=0.2, linewidth=0)
            nm = mean[n][null_rec, cfg].mean(axis=1)
            ns = std[n][null_rec, cfg].mean(axis=1)
            ax.plot(sgd_step[null_rec], nm, color=col, linestyle=":", linewidth=1.2)
            ax.fill_between(sgd_step[null_rec], nm - 2 * ns, nm + 2 * ns, color=col, alpha=0.1, linewidth=0)
        ax.axhline(1.0, color="k", linewidth=0.6)
        ax.set_title(al.LABELS[n])
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("SGD step")
    for ax in axes[:, 0]:
        ax.set_ylabel("alignment (Pearson of entries)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles.append(matplotlib.lines.Line2D([], [], color="0.4", linestyle=":"))
    labels.append("random-basis null (mean ± 2 std, same colour)")
    fig.suptitle(f"Six alignments of layer {layer} ({dims[layer]} -> {dims[layer + 1]}), mean ± std over {seeds} seeds")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.savefig(os.path.join(folder, "alignments.png"), dpi=120)


def _plot_spectra(folder, lam_h, lam_g, final, weight_decays, seeds, layer, top_k) -> None:
    fig, ax = subplots(figsize=(6.5, 5))
    colors = _colors(len(weight_decays))
    alpha = np.asarray(final["rank_alpha_hg_b"])
    for i, (w, col) in enumerate(zip(weight_decays, colors)):
        for r in range(seeds):
            c = i * seeds + r
            h, g = lam_h[c], lam_g[c]
            keep = (h > 1e-5 * h[0]) & (g > 1e-5 * g[0])
            ax.loglog(g[keep], h[keep], "o", color=col, markersize=3, alpha=0.6,
                      label=f"γ = {w:g}: α = {np.nanmean(alpha[i * seeds:(i + 1) * seeds]):.2f}" if r == 0 else None)
            top = keep & (np.arange(len(h)) < top_k)
            if top.sum() >= 2:
                a, b = np.polyfit(np.log(g[top]), np.log(h[top]), 1)
                xs = np.array([g[top].min(), g[top].max()])
                ax.loglog(xs, np.exp(b) * xs ** a, "-", color=col, linewidth=1.5)
    lo, hi = ax.get_xlim()
    ylo, yhi = ax.get_ylim()
    x0, y0 = np.sqrt(lo * hi), np.sqrt(ylo * yhi)
    xs = np.geomspace(lo, hi, 10)
    for p in (1, 2, 3):
        ax.loglog(xs, y0 * (xs / x0) ** p, "--", color="0.6", linewidth=0.8)
        ax.annotate(f"α={p}", (xs[-3], y0 * (xs[-3] / x0) ** p), color="0.4", fontsize=8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(ylo, yhi)
    ax.set(xlabel="eigenvalue of G_b = E[g_b g_bᵀ]", ylabel="eigenvalue of H_b = E[h_b h_bᵀ]",
           title=f"Layer {layer} at the end: λ_h vs λ_g by rank\n(lines: fit over the top {top_k}; dashed: α = 1, 2, 3)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, os.path.join(folder, "spectra.png"))


def _plot_layers(folder, finals, weight_decays, seeds, dims) -> None:
    num_layers = len(finals)
    fig, axes = subplots(1, num_layers, figsize=(4.2 * num_layers, 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    colors = _colors(len(weight_decays))
    x = np.arange(len(al.ALIGNMENTS))
    width = 0.8 / len(weight_decays)
    for li, ax in enumerate(axes):
        for i, (w, col) in enumerate(zip(weight_decays, colors)):
            cfg = slice(i * seeds, (i + 1) * seeds)
            obs = [np.mean(np.asarray(finals[li][n])[cfg]) for n in al.ALIGNMENTS]
            nul = [np.mean(np.asarray(finals[li][f"{n}_null_mean"])[cfg]) for n in al.ALIGNMENTS]
            sd = [np.mean(np.asarray(finals[li][f"{n}_null_std"])[cfg]) for n in al.ALIGNMENTS]
            pos = x - 0.4 + width * (i + 0.5)
            ax.bar(pos, obs, width, color=col, label=f"γ = {w:g}")
            ax.errorbar(pos, nul, yerr=2 * np.asarray(sd), fmt="_", color="r", markersize=8, capsize=2,
                        label="null mean ± 2 std" if i == 0 else None)
        ax.set_xticks(x, [al.LABELS[n].split()[0] for n in al.ALIGNMENTS], rotation=45, fontsize=8)
        ax.set_title(f"layer {li} ({dims[li]} -> {dims[li + 1]})")
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("final alignment")
    axes[0].legend(fontsize=7)
    fig.suptitle("Final alignments of every layer (bars) against the random-basis null (red)")
    save_figure(fig, os.path.join(folder, "layers.png"))


def _print(summary, checks, layer, dims, train_s, stats_s, out) -> None:
    print(f"Representation alignment, layer {layer} ({dims[layer]} -> {dims[layer + 1]}); "
          f"training {train_s:.0f} s, statistics {stats_s:.0f} s")
    head = "weight decay  " + "  ".join(f"{n:>15s}" for n in al.ALIGNMENTS) + "   eval loss"
    print(head)
    for w, entry in summary.items():
        cells = "  ".join(f"{entry[n]['final']:6.3f} (z {entry[n]['z_final']:5.1f})" for n in al.ALIGNMENTS)
        print(f"{w:>12s}  {cells}   {entry['eval_loss_final']:.3f}")
        print(f"{'null':>12s}  " + "  ".join(f"{entry[n]['null_mean_final']:6.3f}         " for n in al.ALIGNMENTS))
    for w, entry in summary.items():
        print(f"  {w}: FDT fit H_b ≈ {entry['fdt_b_z']:.2f} Z_b + {entry['fdt_b_g']:.2f} G_b (R² {entry['fdt_b_r2']:.2f}); "
              f"G_a ≈ {entry['fdt_a_z']:.2f} Z_a + {entry['fdt_a_h']:.2f} H_a (R² {entry['fdt_a_r2']:.2f}); "
              f"α(λ_h vs λ_g, rank) = {entry['rank_alpha_hg_b']:.2f}")
    print("checks:", json.dumps(checks, default=float))
    print(f"results in {os.path.abspath(out)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--checkpoint", default=None, help="folder to save training into and resume from")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    add_config_options(parser, rp.Config, {
        "steps": "SGD steps", "record_every": "SGD steps between measurements", "weight_decays": "comma-separated γ",
        "seeds": "seeds per weight decay", "lr": "SGD learning rate", "batch_size": "minibatch size",
        "d_in": "input dimension", "width": "hidden width", "depth": "hidden layers", "d_out": "output dimension",
        "teacher_width": "teacher's hidden width", "noise": "label noise std",
        "eval_size": "samples measuring H and G", "null_draws": "random-basis draws per null",
        "null_every": "null at every n-th record", "layer": "headline layer (-1: the middle one)",
        "top_k": "leading eigenvalues in the power-law fits", "chunk": "records per compiled chunk / checkpoint",
        "seed": "PRNG seed"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    out, checkpoint, quiet = (options.pop(k) for k in ("out", "checkpoint", "quiet"))

    def body() -> int:
        run(out, rp.Config(**options), checkpoint=checkpoint, quiet=quiet)
        return 0

    return run_main("representation_alignment", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
