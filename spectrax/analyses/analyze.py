"""`spectrax analyze`: run analyses on a checkpoint and write tables, plots and a report to a folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence

import numpy as np

from spectrax.analyses.laws import PAIRS, laws_table
from spectrax.io.load import open_source
from spectrax.report.output import atomic_output_dir
from spectrax.report.plots import head_heatmap, layer_trend
from spectrax.report.tables import to_markdown, write_csv, write_json

__all__ = ["analyze", "ANALYSES", "layer_means"]

ANALYSES = ("laws",)
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
    progress: bool = True,
) -> str:
    """Analyze the checkpoint at `path` into the new folder `out`; returns `out`'s absolute path.

    Writes `heads.csv`/`heads.json` (one row per layer and query head, each statistic with
    `_null_mean`, `_null_std`, `_z`), `layers.csv` (per-layer means), `summary.json`, `report.md`
    and PNG figures. The folder appears only when everything is written.
    """
    unknown = sorted(set(analyses) - set(ANALYSES))
    if unknown:
        raise ValueError(f"unknown analyses {unknown}; available: {', '.join(ANALYSES)}")
    source = open_source(path, strict=strict)
    spec = source.spec
    started = time.time()
    with atomic_output_dir(out, checkpoint=source.path) as tmp:
        heads = laws_table(source, layers=layers, num_draws=num_draws, seed=seed, progress=progress)
        write_csv(heads, os.path.join(tmp, "heads.csv"))
        write_json(heads, os.path.join(tmp, "heads.json"))
        stats = [f"{s}_{p}" for p in PAIRS for s in _HEADLINE]
        per_layer = layer_means(heads, stats)
        write_csv(per_layer, os.path.join(tmp, "layers.csv"))
        summary = {
            "checkpoint": source.path,
            "spec": spec.to_dict(),
            "analyses": list(analyses),
            "null_draws": num_draws,
            "seed": seed,
            "seconds": round(time.time() - started, 2),
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
        with open(os.path.join(tmp, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        for stat in ("pearson_qk", "ssr_qk", "cos_u_qk"):
            head_heatmap(heads, f"{stat}_z", os.path.join(tmp, f"heatmap_{stat}_z.png"),
                         title=f"{stat}: z-score against Gaussian null")
            layer_trend(heads, stat, os.path.join(tmp, f"trend_{stat}.png"), title=f"{stat} per layer vs random null")
        with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
            f.write(_report(summary, per_layer))
    return os.path.abspath(os.fspath(out))


def _nan(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _report(summary: dict, per_layer: dict[str, np.ndarray]) -> str:
    spec = summary["spec"]
    rows = {"statistic": [], "model median": [], "null mean": [], "null std": [], "mean z": []}
    for stat, v in summary["model"].items():
        rows["statistic"].append(stat)
        rows["model median"].append(v["median_over_layers"])
        rows["null mean"].append(v["null_mean"])
        rows["null std"].append(v["null_std"])
        rows["mean z"].append(v["mean_z"])
    table = {k: np.array(v, dtype=object if k == "statistic" else float) for k, v in rows.items()}
    lines = [
        f"# Per-head spectral statistics: {os.path.basename(summary['checkpoint'])}",
        "",
        f"{spec['model_type']}, {spec['num_layers']} layers, {spec['num_heads']} query / {spec['num_kv_heads']} "
        f"key-value heads of {spec['head_dims'][0]} x {spec['hidden_size']}.",
        "",
        "## What was measured",
        "",
        "For every query head h and its key/value head g = h // (H/KV): the Pearson correlation and spectral "
        "shape residual (SSR) of the singular values of W_Q,h and W_K,g (`_qk`), of W_Q,h and W_V,g (`_qv`), and of "
        "W_K,g and W_V,g (`_kv`); the mean |cosine| of index-matched left (`cos_u`) and right (`cos_v`) singular "
        "vectors; and the Grassmann similarity of their row spaces.",
        "",
        "## The null",
        "",
        f"Each statistic is set beside the same statistic for independent Gaussian matrices of the same shapes and "
        f"scales ({summary['null_draws']} Monte Carlo draws, seed {summary['seed']}); cosine and Grassmann nulls are "
        "exact (E|cos| = Γ(d/2)/(√π Γ((d+1)/2)), Grassmann k/d). A z-score near 0 means the weights do what random "
        "matrices do anyway.",
        "",
        "## Model-level values (median over layers of the per-layer head mean)",
        "",
        to_markdown(table),
        "",
        "## What stands out",
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
    lines += ["", "Figures: `heatmap_*_z.png` (layer x head z-scores), `trend_*.png` (per-layer mean with the null band).",
              "Tables: `heads.csv` (per head), `layers.csv` (per layer), `summary.json`.", ""]
    return "\n".join(lines)
