"""`spectrax analyze`: run analyses on a checkpoint and write tables, plots and a report to a folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence

import numpy as np

from spectrax.analyses.laws import PAIRS, laws_table
from spectrax.analyses.rank import RANK_STATISTICS, rank_table
from spectrax.io.load import open_source
from spectrax.report.output import atomic_output_dir
from spectrax.report.plots import head_heatmap, layer_trend, matrix_heatmap
from spectrax.report.tables import to_markdown, write_csv, write_json

__all__ = ["analyze", "ANALYSES", "layer_means"]

ANALYSES = ("laws", "rank")
_HEADLINE = ("pearson", "ssr", "cos_u", "cos_v", "grassmann")


def layer_means(table: dict[str, np.ndarray], stats: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-layer mean over heads (the source's per-layer value) of each stat and its null mean/std."""
    layers = np.asarray(table["layer"])
    ids = np.unique(layers)
    out = {"layer": ids}
    for stat in stats:
        for column in (stat, f"{stat}_null_mean", f"{stat}_null_std"):
            out[column] = np.array([np.nanmean(np.asarray(table[column], float)[layers == i]) for i in ids])
    return out


def analyze(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    analyses: Iterable[str] = ANALYSES,
    num_draws: int = 16,
    seed: int = 0,
    layers: Iterable[int] | None = None,
    strict: bool = True,
    crop: int | None = None,
    progress: bool = True,
) -> str:
    """Analyze the checkpoint at `path` into the new folder `out`; returns `out`'s absolute path.

    Writes, for `laws`, `heads.csv`/`heads.json` (one row per layer and query head, each statistic
    with `_null_mean`, `_null_std`, `_z`) and `layers.csv` (per-layer means); for `rank`,
    `matrices.csv`/`matrices.json` (one row per weight matrix; `crop` analyzes only its top-left
    block); then `summary.json`, `report.md` and PNG figures. The folder appears only when
    everything is written.
    """
    unknown = sorted(set(analyses) - set(ANALYSES))
    if unknown:
        raise ValueError(f"unknown analyses {unknown}; available: {', '.join(ANALYSES)}")
    source = open_source(path, strict=strict)
    spec = source.spec
    started = time.time()
    analyses = list(dict.fromkeys(analyses))
    with atomic_output_dir(out, checkpoint=source.path) as tmp:
        summary = {
            "checkpoint": source.path, "spec": spec.to_dict(), "analyses": analyses, "null_draws": num_draws,
            "seed": seed, "crop": crop,
        }
        sections = []
        if "laws" in analyses:
            heads = laws_table(source, layers=layers, num_draws=num_draws, seed=seed, progress=progress)
            summary.update(_write_laws(heads, tmp))
            sections.append(_laws_report(summary))
        if "rank" in analyses:
            matrices = rank_table(source, layers=layers, num_draws=num_draws, seed=seed, crop=crop, progress=progress)
            summary["rank"] = _write_rank(matrices, tmp)
            sections.append(_rank_report(summary))
        summary["seconds"] = round(time.time() - started, 2)
        with open(os.path.join(tmp, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
            f.write(_header(summary) + "\n".join(sections))
    return os.path.abspath(os.fspath(out))


def _nan(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _write_laws(heads: dict[str, np.ndarray], folder: str) -> dict:
    write_csv(heads, os.path.join(folder, "heads.csv"))
    write_json(heads, os.path.join(folder, "heads.json"))
    stats = [f"{s}_{p}" for p in PAIRS for s in _HEADLINE]
    per_layer = layer_means(heads, stats)
    write_csv(per_layer, os.path.join(folder, "layers.csv"))
    for stat in ("pearson_qk", "ssr_qk", "cos_u_qk"):
        head_heatmap(heads, f"{stat}_z", os.path.join(folder, f"heatmap_{stat}_z.png"),
                     title=f"{stat}: z-score against Gaussian null")
        layer_trend(heads, stat, os.path.join(folder, f"trend_{stat}.png"), title=f"{stat} per layer vs random null")
    return {
        "nonfinite_heads": [[int(l), int(h)] for l, h, f in zip(heads["layer"], heads["head"], heads["finite"]) if not f],
        "model": {
            stat: {
                "median_over_layers": _nan(np.nanmedian(per_layer[stat])),
                "mean_over_layers": _nan(np.nanmean(per_layer[stat])),
                "null_mean": _nan(np.nanmean(per_layer[f"{stat}_null_mean"])),
                "null_std": _nan(np.nanmean(per_layer[f"{stat}_null_std"])),
                "mean_z": _nan(np.nanmean(heads[f"{stat}_z"])),
            }
            for stat in stats
        },
    }


def _write_rank(matrices: dict[str, np.ndarray], folder: str) -> dict:
    write_csv(matrices, os.path.join(folder, "matrices.csv"))
    write_json(matrices, os.path.join(folder, "matrices.json"))
    for stat in ("erank", "ks_mp"):
        matrix_heatmap(matrices, f"{stat}_z", os.path.join(folder, f"heatmap_matrices_{stat}_z.png"),
                       title=f"{stat} per weight matrix: z-score against Gaussian null")
    kinds = list(dict.fromkeys(matrices["matrix"].tolist()))
    by_kind = {}
    for kind in kinds:
        rows = matrices["matrix"] == kind
        by_kind[kind] = {
            stat: {"mean": _nan(np.nanmean(matrices[stat][rows])),
                   "null_mean": _nan(np.nanmean(matrices[f"{stat}_null_mean"][rows])),
                   "mean_z": _nan(np.nanmean(matrices[f"{stat}_z"][rows]))}
            for stat in RANK_STATISTICS
        }
    return by_kind


def _header(summary: dict) -> str:
    spec = summary["spec"]
    return "\n".join([
        f"# Spectral statistics: {os.path.basename(summary['checkpoint'])}",
        "",
        f"{spec['model_type']}, {spec['num_layers']} layers, {spec['num_heads']} query / {spec['num_kv_heads']} "
        f"key-value heads of {spec['head_dims'][0]} x {spec['hidden_size']}. Null: shape- and scale-matched "
        f"Gaussian matrices ({summary['null_draws']} Monte Carlo draws, seed {summary['seed']}) or exact values. "
        "A z-score near 0 means the weights do what random matrices do anyway.",
        "",
    ])


def _laws_report(summary: dict) -> str:
    rows = {"statistic": [], "model median": [], "null mean": [], "null std": [], "mean z": []}
    for stat, v in summary["model"].items():
        rows["statistic"].append(stat)
        rows["model median"].append(v["median_over_layers"])
        rows["null mean"].append(v["null_mean"])
        rows["null std"].append(v["null_std"])
        rows["mean z"].append(v["mean_z"])
    table = {k: np.array(v, dtype=object if k == "statistic" else float) for k, v in rows.items()}
    lines = [
        "## Per-head statistics (laws)",
        "",
        "For every query head h and its key/value head g = h // (H/KV): the Pearson correlation and spectral "
        "shape residual (SSR) of the singular values of W_Q,h and W_K,g (`_qk`), of W_Q,h and W_V,g (`_qv`), and of "
        "W_K,g and W_V,g (`_kv`); the mean |cosine| of index-matched left (`cos_u`) and right (`cos_v`) singular "
        "vectors; and the Grassmann similarity of their row spaces. Spectrum statistics are set against "
        "Monte Carlo Gaussian spectra; cosine and Grassmann nulls are exact (E|cos| = Γ(d/2)/(√π Γ((d+1)/2)), "
        "Grassmann k/d).",
        "",
        "Model-level values (median over layers of the per-layer head mean):",
        "",
        to_markdown(table),
        "",
        "What stands out:",
        "",
    ]
    notable = [(stat, v) for stat, v in summary["model"].items() if v["mean_z"] is not None and abs(v["mean_z"]) > 3]
    if notable:
        lines += [f"- `{stat}` departs from the random null: mean z = {v['mean_z']:.1f} "
                  f"(observed {v['median_over_layers']:.4g} vs null {v['null_mean']:.4g})." for stat, v in notable]
    else:
        lines.append("- No statistic departs from its random null by more than 3 standard deviations on average.")
    near_one = summary["model"].get("pearson_qk", {})
    if near_one.get("null_mean") and near_one["null_mean"] > 0.9:
        lines.append(f"- Pearson r of sorted Q/K spectra is {near_one['null_mean']:.3f} for random matrices already: "
                     "a value near 1 is not, by itself, evidence of structure.")
    if summary["nonfinite_heads"]:
        lines.append(f"- {len(summary['nonfinite_heads'])} heads hold NaN/Inf weights (layer, head): "
                     f"{summary['nonfinite_heads'][:10]}; their statistics are NaN.")
    lines += ["", "Files: `heads.csv` (per head), `layers.csv` (per layer), `heatmap_*_z.png` (layer x head z-scores), "
              "`trend_*.png` (per-layer mean with the null band).", ""]
    return "\n".join(lines)


def _rank_report(summary: dict) -> str:
    rank = summary["rank"]
    kinds = list(rank)
    table = {"matrix": np.array(kinds, dtype=object)}
    for stat in ("erank", "stable_rank", "max_mean", "ks_mp"):
        table[stat] = np.array([rank[k][stat]["mean"] for k in kinds], float)
        table[f"{stat} null"] = np.array([rank[k][stat]["null_mean"] for k in kinds], float)
        table[f"{stat} z"] = np.array([rank[k][stat]["mean_z"] for k in kinds], float)
    crop = f" (top-left {summary['crop']}x{summary['crop']} block only, as in the source)" if summary["crop"] else ""
    lines = [
        "## Whole-matrix statistics (rank)",
        "",
        f"Effective rank, stable rank, max/mean singular value and the KS distance of the scale-normalized "
        f"spectrum to Marchenko-Pastur, for every weight matrix{crop}; mean over layers per matrix kind "
        "(`embed.tokens`/`lm_head` are single matrices):",
        "",
        to_markdown(table),
        "",
        "Files: `matrices.csv` (one row per matrix, with null columns), `heatmap_matrices_*_z.png`.",
        "",
    ]
    return "\n".join(lines)
