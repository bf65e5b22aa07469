"""`spectrax analyze`: run analyses on a checkpoint and write tables, plots and a report to a folder.

Folder layout (files appear for the analyses run):

    heads.csv, heads.json     one row per (layer, query head): laws and kernel statistics
    layers.csv                per-layer means over heads (and pseudo-bulk medians) with null columns
    groups.csv                layer-group means (four equal blocks of layers, as the source)
    precision.csv             the "third law" depth limits per floating format (laws)
    matrices.csv, .json       one row per weight matrix: rank and esd statistics
    kernel_similarity.csv     layer x layer Grassmann similarity of QK-kernel subspaces
    summary.json, report.md   model-level values and a readable report
    plots/*.png
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable

import numpy as np

from spectrax import spectral as sp
from spectrax.analyses.aggregate import finite_mean, group_means, layer_groups, layer_means, model_values, pseudo_bulk
from spectrax.analyses.pipeline import ANALYSES, Options, Tables, check_analyses, collect
from spectrax.analyses.esd import ESD_STATISTICS
from spectrax.analyses.kernel import kernel_summary, layer_similarity
from spectrax.analyses.laws import PAIRS
from spectrax.analyses.precision import precision_table
from spectrax.analyses.rank import RANK_STATISTICS
from spectrax.io.load import Source, open_source, stream_layers
from spectrax.report import plots, sections
from spectrax.report.output import RunFolder, checkpoint_fingerprint, run_folder
from spectrax.report.tables import json_value, write_csv, write_json

__all__ = ["analyze", "ANALYSES", "HEADLINE", "KERNEL_HEADLINE", "source_fingerprint", "write_results"]

HEADLINE = tuple(f"{s}_{p}" for p in PAIRS for s in ("pearson", "ssr", "cos_u", "cos_v", "grassmann"))
KERNEL_HEADLINE = ("kernel_erank", "kernel_stable_rank", "ffn_alignment")
NUM_GROUPS = 4


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
    top_k: int = 16,
    shuffle_draws: int = 4,
    force: bool = False,
    progress: bool = True,
    tower: str | None = None,
    disk_budget: int | str | None = None,
) -> str:
    """Analyze the checkpoint at `path` into the folder `out`; returns `out`'s absolute path.

    `path` may be a Hub repo id `ORG/NAME[@REVISION]`; with `disk_budget` (bytes or e.g. `"20GB"`)
    its weight files are downloaded shard by shard and deleted once no later layer needs them.

    The run works in `.<out>.partial` beside `out`, storing each finished layer; if it is
    interrupted, the same call resumes from the layers already done. `out` appears only when
    everything is written. An existing `out` is refused unless `force`, which replaces it (and
    discards an interrupted run with other settings) once the new run has finished.
    """
    analyses = check_analyses(analyses)
    source = open_source(path, strict=strict, tower=tower, disk_budget=disk_budget)
    options = Options(num_draws=num_draws, seed=seed, crop=crop, top_k=top_k, shuffle_draws=shuffle_draws)
    chosen = list(range(source.spec.num_layers)) if layers is None else sorted(set(layers))
    settings = {
        "checkpoint": source.path, "files": source_fingerprint(source), "tower": tower,
        "analyses": list(analyses), "layers": chosen, **{k: v for k, v in vars(options).items()},
    }
    started = time.time()
    with run_folder(out, settings=settings, checkpoints=[source.path], force=force) as folder:
        report_resume(folder, progress)
        tables = collect(source, analyses=analyses, layers=chosen, options=options, folder=folder, progress=progress)
        summary = {"checkpoint": source.path, "spec": source.spec.to_dict(), "analyses": list(analyses),
                   "layers": chosen, "options": vars(options), "resumed_parts": len(folder.resumed),
                   "hub": source.hub.describe() if source.hub is not None else None}
        write_results(tables, folder.path, summary, source=source)
        summary["seconds"] = round(time.time() - started, 2)
        with open(os.path.join(folder.path, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return folder.out


def source_fingerprint(source: Source) -> list:
    """What identifies the checkpoint's contents: a Hub commit sha (files come and go under a disk
    budget), else each file's name, size and modification time."""
    if source.hub is not None:
        return [source.hub.repo_id, source.hub.sha]
    return checkpoint_fingerprint(source.files.files)


def report_resume(folder: RunFolder, progress: bool) -> None:
    """Say what an interrupted run left that this one reuses, and which damaged parts it redoes."""
    if progress and folder.resumed:
        print(f"resuming {os.path.dirname(folder.path)}: {len(folder.resumed)} parts already done")
    for name in folder.discarded:
        print(f"spectrax: discarded damaged part {name} of the interrupted run; it is recomputed", file=sys.stderr)


def write_results(tables: Tables, folder: str, summary: dict, *, source: Source | None = None) -> None:
    """Write every table, plot and `report.md` of `tables` into `folder`; fills `summary` in."""
    os.makedirs(os.path.join(folder, "plots"), exist_ok=True)
    text = [sections.header(summary)]
    if tables.heads is not None:
        write_csv(tables.heads, os.path.join(folder, "heads.csv"))
        write_json(tables.heads, os.path.join(folder, "heads.json"))
        per_layer = _write_layers(tables.heads, folder)
        if "laws" in summary["analyses"]:
            summary["laws"] = _laws(tables.heads, per_layer, folder)
            text.append(sections.laws(summary["laws"]))
        if "kernel" in summary["analyses"]:
            top_k = min(summary["options"]["top_k"], *summary["spec"]["head_dims"])  # clipped to the head dim
            summary["kernel"] = _kernel(tables, folder, top_k, summary["spec"]["hidden_size"])
            text.append(sections.kernel(summary["kernel"]))
    if tables.matrices is not None:
        write_csv(tables.matrices, os.path.join(folder, "matrices.csv"))
        write_json(tables.matrices, os.path.join(folder, "matrices.json"))
        if "rank" in summary["analyses"]:
            summary["rank"] = _by_kind(tables.matrices, RANK_STATISTICS)
            for stat in ("erank", "ks_mp"):
                plots.matrix_heatmap(tables.matrices, f"{stat}_z", _plot(folder, f"heatmap_matrices_{stat}_z"),
                                     title=f"{stat} per weight matrix: z-score against Gaussian null")
            text.append(sections.rank(summary["rank"], summary["options"]["crop"]))
        if "esd" in summary["analyses"]:
            summary["esd"] = _by_kind(tables.matrices, ESD_STATISTICS)
            plots.matrix_heatmap(tables.matrices, "lambda_max_z", _plot(folder, "heatmap_matrices_lambda_max_z"),
                                 title="largest eigenvalue per weight matrix: z against Gaussian null")
            text.append(sections.esd(summary["esd"], summary["options"]["shuffle_draws"]))
    if source is not None:
        summary["spectra_plots"] = _spectra_plots(tables, source, folder, summary["options"]["crop"])
    text.append(sections.files(sorted(os.listdir(folder)), sorted(os.listdir(os.path.join(folder, "plots")))))
    with open(os.path.join(folder, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(text))


def _plot(folder: str, name: str) -> str:
    return os.path.join(folder, "plots", f"{name}.png")


def _write_layers(heads: dict[str, np.ndarray], folder: str) -> dict[str, np.ndarray]:
    stats = [s for s in (*HEADLINE, *KERNEL_HEADLINE) if s in heads]
    per_layer = layer_means(heads, stats)
    for stat in stats:
        if "kv_head" in heads:
            per_layer[f"{stat}_bulk"] = pseudo_bulk(heads, stat)[0]
    if "kernel_erank" in heads:
        erank, layers = np.asarray(heads["kernel_erank"], float), np.asarray(heads["layer"])
        per_layer["kernel_erank_cv"] = np.array(
            [np.nanstd(erank[layers == i]) / np.nanmean(erank[layers == i]) for i in per_layer["layer"]])
    write_csv(per_layer, os.path.join(folder, "layers.csv"))
    groups = layer_groups(per_layer["layer"], NUM_GROUPS)
    write_csv(group_means(per_layer, stats, groups), os.path.join(folder, "groups.csv"))
    return per_layer


def _laws(heads: dict[str, np.ndarray], per_layer: dict[str, np.ndarray], folder: str) -> dict:
    for stat in ("pearson_qk", "ssr_qk", "cos_u_qk"):
        plots.head_heatmap(heads, f"{stat}_z", _plot(folder, f"heatmap_{stat}_z"),
                           title=f"{stat}: z-score against Gaussian null")
        plots.layer_trend(heads, stat, _plot(folder, f"trend_{stat}"), title=f"{stat} per layer vs random null")
    mean_ssr = model_values(heads, per_layer, "ssr_qk")["mean_over_layers"]
    measured = np.concatenate([np.asarray(heads["cond_q"], float), np.asarray(heads["cond_k"], float)])
    precision = precision_table(mean_ssr if mean_ssr is not None else float("nan"), measured_kappa=measured)
    write_csv(precision, os.path.join(folder, "precision.csv"))
    groups = group_means(per_layer, HEADLINE, layer_groups(per_layer["layer"], NUM_GROUPS))
    return {
        "model": {stat: model_values(heads, per_layer, stat) for stat in HEADLINE},
        "groups": {str(g): {s: json_value(groups[s][i]) for s in ("ssr_qk", "ssr_qk_null_mean", "pearson_qk")}
                   for i, g in enumerate(groups["group"])},
        "precision": {str(f): {c: json_value(precision[c][i]) for c in precision if c != "format"}
                      for i, f in enumerate(precision["format"])},
        "median_cond_qk": json_value(np.nanmedian(measured)),
        "nonfinite_heads": [[int(l), int(h)] for l, h, f in zip(heads["layer"], heads["head"], heads["finite"]) if not f],
        "degenerate_heads": [[int(l), int(h), str(d)] for l, h, d in zip(heads["layer"], heads["head"], heads["degenerate"]) if d],
    }


def _kernel(tables: Tables, folder: str, top_k: int, hidden: int) -> dict:
    heads = tables.heads
    similarity = None
    if tables.kernel_bases is not None and len(tables.kernel_bases) > 1:
        similarity = layer_similarity(tables.kernel_bases)  # (H, L, L)
        ids = np.unique(heads["layer"])
        mean, std = np.nanmean(similarity, axis=0), np.nanstd(similarity, axis=0)
        a, b = np.meshgrid(np.arange(len(ids)), np.arange(len(ids)), indexing="ij")
        k = tables.kernel_bases.shape[-1]
        write_csv({"layer_a": ids[a.ravel()], "layer_b": ids[b.ravel()], "similarity": mean.ravel(),
                   "similarity_head_std": std.ravel(), "chance": np.full(a.size, k / hidden)},
                  os.path.join(folder, "kernel_similarity.csv"))
        plots.similarity_heatmap(mean, ids, _plot(folder, "kernel_similarity"), chance=k / hidden,
                                 title=f"QK-kernel top-{k} key-side subspaces: layer x layer similarity (mean over heads)")
    for stat in ("kernel_erank", "ffn_alignment"):
        plots.layer_trend(heads, stat, _plot(folder, f"trend_{stat}"), title=f"{stat} per layer vs random null")
    plots.head_heatmap(heads, "kernel_erank_z", _plot(folder, "heatmap_kernel_erank_z"),
                       title="QK-kernel effective rank: z-score against Gaussian null")
    return kernel_summary(heads, similarity, top_k=top_k, hidden=hidden)


def _by_kind(matrices: dict[str, np.ndarray], stats) -> dict:
    """Mean over layers per matrix kind of each stat, its null mean and its z."""
    out = {}
    for kind in dict.fromkeys(matrices["matrix"].tolist()):
        rows = matrices["matrix"] == kind
        out[kind] = {
            stat: {suffix.lstrip("_") or "mean": json_value(finite_mean(np.asarray(matrices[stat + suffix], float)[rows]))
                   for suffix in ("", "_null_mean", "_z", "_shuffle_mean") if stat + suffix in matrices}
            for stat in stats
        }
    return out


def _spectra_plots(tables: Tables, source: Source, folder: str, crop: int | None) -> list[dict]:
    """ESD-vs-Marchenko-Pastur figures of a few selected matrices: the query head whose Q/K SSR
    departs most from its null and a typical one; the weight matrix with the most spikes."""
    picks: list[tuple[int, str, int | None, str]] = []
    if tables.heads is not None and "ssr_qk_z" in tables.heads:
        z = np.asarray(tables.heads["ssr_qk_z"], float)
        if np.isfinite(z).any():
            for i, why in ((int(np.nanargmax(np.abs(z))), "largest |z| of ssr_qk"),
                           (int(np.nanargmin(np.abs(z - np.nanmedian(z)))), "median z of ssr_qk")):
                picks.append((int(tables.heads["layer"][i]), "attn.q", int(tables.heads["head"][i]), why))
    if tables.matrices is not None and "num_spikes" in tables.matrices:
        spikes = np.asarray(tables.matrices["num_spikes"], float)
        inside = np.asarray(tables.matrices["layer"]) >= 0
        if (np.isfinite(spikes) & inside).any():
            i = int(np.nanargmax(np.where(inside, spikes, np.nan)))
            picks.append((int(tables.matrices["layer"][i]), str(tables.matrices["matrix"][i]), None, "most spikes"))
    made = []
    for layer in sorted({p[0] for p in picks}):
        (block,) = list(stream_layers(source, layers=[layer]))
        params = {"attn": {k: np.asarray(v[0]) for k, v in block.params["attn"].items()},
                  "mlp": {k: np.asarray(v[0]) for k, v in block.params["mlp"].items()}}
        for _, name, head, why in (p for p in picks if p[0] == layer):
            part, _, sub = name.partition(".")
            w = params[part][sub]
            w = w[head] if head is not None else w.reshape(-1, w.shape[-1])
            if crop:
                w = w[:crop, :crop]
            s = np.asarray(sp.singular_values(np.asarray(w, np.float32)))
            label = f"L{layer}_{name}" + (f"_h{head}" if head is not None else "")
            plots.spectrum_vs_mp(s, w.shape, _plot(folder, f"spectrum_{label}"),
                                 title=f"layer {layer} {name}" + (f" head {head}" if head is not None else "") + f" ({why})")
            made.append({"layer": layer, "matrix": name, "head": head, "why": why, "file": f"plots/spectrum_{label}.png"})
    return made

