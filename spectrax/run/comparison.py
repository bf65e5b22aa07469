"""`spectrax compare A B`: two checkpoints of one architecture side by side (e.g. a base model and
its RL-tuned version).

Both are analyzed with the same settings and the same random keys (so a layer that did not change
gives exactly zero difference, nulls included). For every per-head and per-matrix statistic X the
tables hold `X_a`, `X_b`, `X_diff = X_b - X_a` and `X_diff_z = X_diff / sqrt(std_a^2 + std_b^2)`,
with `std` the statistic's null std: the spread of the difference of two independent random
matrices of these shapes, so |z| < 2 is a difference chance alone produces. Layer groups report
the source's relative change `(a - b) / a`.

Folder layout: `a/` and `b/` (the full analyses, as `spectrax analyze` writes them),
`heads_diff.csv`, `layers_diff.csv`, `groups_diff.csv`, `matrices_diff.csv`, `summary.json`,
`report.md`, `plots/`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from spectrax.analyses.aggregate import NUM_GROUPS, group_means, layer_groups, layer_means, relative_change
from spectrax.analyses.base import Options
from spectrax.analyses.tables import json_value
from spectrax.io.load import open_source
from spectrax.report import plots, sections
from spectrax.report.tables import write_csv
from spectrax.run.analysis import RunConfig, configs, headline_statistics, report_resume, run_summary, source_fingerprint, write_results
from spectrax.run.streaming import collect
from spectrax.run.store import run_folder

__all__ = ["DEFAULT", "compare", "difference_table", "statistic_columns"]

DEFAULT = RunConfig(analyses=("laws", "rank"))  # what `compare` runs unless told otherwise

_KEYS = ("layer", "head", "kv_head", "matrix", "rows", "cols")
_DERIVED = ("_null_mean", "_null_std", "_se", "_z", "_pct", "_diff", "_ratio", "_shuffle_mean", "_shuffle_std", "_shuffle_z",
            "_bulk", "_cv")
_ARCHITECTURE_FIELDS = ("model_type", "num_layers", "num_heads", "num_kv_heads", "head_dims", "hidden_size", "intermediate_size", "vocab_size")


def statistic_columns(table: dict[str, np.ndarray]) -> list[str]:
    """The numeric statistics of a table: not keys, flags or derived null columns."""
    return [c for c in table if c not in (*_KEYS, "finite") and not c.endswith(_DERIVED)
            and np.asarray(table[c]).dtype.kind in "fiu"]


def difference_table(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Row-aligned tables -> keys, then `X_a`, `X_b`, `X_diff`, `X_diff_z` for each statistic."""
    keys = [c for c in _KEYS if c in a]
    for c in keys:
        if not np.array_equal(np.asarray(a[c]), np.asarray(b[c])):
            raise ValueError(f"tables disagree in column {c!r}; compare needs the same layers and matrices")
    out = {c: a[c] for c in keys}
    for stat in statistic_columns(a):
        xa, xb = np.asarray(a[stat], float), np.asarray(b[stat], float)
        out[f"{stat}_a"], out[f"{stat}_b"], out[f"{stat}_diff"] = xa, xb, xb - xa
        if f"{stat}_null_std" in a:
            spread = np.hypot(np.asarray(a[f"{stat}_null_std"], float), np.asarray(b[f"{stat}_null_std"], float))
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"{stat}_diff_z"] = np.where(spread > 0, (xb - xa) / spread, np.where(xb == xa, 0.0, np.nan))
    return out


def _check_same_architecture(spec_a, spec_b, path_a, path_b) -> None:
    a, b = spec_a.to_dict(), spec_b.to_dict()
    differ = [f"{f}: {a[f]} vs {b[f]}" for f in _ARCHITECTURE_FIELDS if a.get(f) != b.get(f)]
    if differ:
        raise ValueError(f"{path_a} and {path_b} are not the same architecture ({'; '.join(differ)})")


def compare(path_a: str | os.PathLike, path_b: str | os.PathLike, out: str | os.PathLike,
            options: Options | None = None, config: RunConfig | None = None, **fields) -> str:
    """Compare two checkpoints (folders or Hub repo ids) into the folder `out` (resumable and atomic
    like `analyze`); `options`, `config` and keyword arguments as in `analyze` (default analyses
    `laws` and `rank`), `disk_budget` for each checkpoint in turn.

    Args:
      path_a: the first checkpoint (the reference: differences are b - a).
      path_b: the second checkpoint, of the same architecture.
      out: the folder to write: `a/` and `b/` (each a full analysis), the differences in
        null-spread units (`heads_diff.csv`, `layers_diff.csv`, ...), `report.md`.
      options: as in `analyze`.
      config: as in `analyze`.
      **fields: as in `analyze`.

    Returns:
      The absolute path of `out`.

    Raises:
      ValueError: a bad option, an existing `out` without `force`, or checkpoints of different shapes.

    Examples:
        >>> import os, tempfile
        >>> import spectrax as sx
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     out = sx.compare(sx.data.TINY_LLAMA, sx.data.TINY_LLAMA, os.path.join(tmp, "same"),
        ...                      analyses=["laws"], layers=[0], num_draws=4, progress=False)
        ...     print(sorted(f for f in os.listdir(out) if f.endswith("_diff.csv")))
        ['groups_diff.csv', 'heads_diff.csv', 'layers_diff.csv']
    """
    options, config = configs(options, config, fields, DEFAULT)
    source_a, source_b = (open_source(p, strict=config.strict, tower=config.tower, disk_budget=config.disk_budget)
                          for p in (path_a, path_b))
    _check_same_architecture(source_a.spec, source_b.spec, source_a.path, source_b.path)
    chosen = list(range(source_a.spec.num_layers)) if config.layers is None else list(config.layers)
    labels = _labels(source_a.name, source_b.name)
    settings = {
        "checkpoints": [source_a.path, source_b.path], "analyses": config.names, "layers": chosen,
        "files": [source_fingerprint(s) for s in (source_a, source_b)], **dataclasses.asdict(options),
    }
    started = time.time()
    with run_folder(out, settings=settings, checkpoints=[source_a.path, source_b.path], force=config.force) as folder:
        report_resume(folder, config.progress)
        tables = {}
        for tag, source in (("a", source_a), ("b", source_b)):
            tables[tag] = collect(source, analyses=config.analyses, layers=chosen, options=options, folder=folder,
                                  progress=config.progress, part_prefix=f"{tag}-")
            summary = run_summary(source, config, chosen, options, folder)
            os.makedirs(os.path.join(folder.path, tag), exist_ok=True)
            write_results(tables[tag], os.path.join(folder.path, tag), summary, analyses=config.analyses,
                          spec=source.spec, options=options, plots=config.plots)
            with open(os.path.join(folder.path, tag, "summary.json"), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=2)
        summary = _write_differences(tables["a"], tables["b"], folder.path, labels, config)
        summary.update(checkpoints=[source_a.path, source_b.path],
                       hubs=[s.hub.describe() if s.hub is not None else None for s in (source_a, source_b)],
                       options=dataclasses.asdict(options), layers=chosen, seconds=round(time.time() - started, 2))
        with open(os.path.join(folder.path, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(folder.path, "report.md"), "w", encoding="utf-8") as f:
            f.write(sections.compare(summary))
    return folder.out


def _labels(a: str, b: str) -> tuple[str, str]:
    a, b = a.replace("/", "-"), b.replace("/", "-")  # labels name columns and files
    return (a, b) if a != b else ("a", "b")


def _write_differences(ta, tb, folder: str, labels: tuple[str, str], config: RunConfig) -> dict:
    if config.plots:
        os.makedirs(os.path.join(folder, "plots"), exist_ok=True)
    summary: dict = {"labels": list(labels), "heads": {}, "matrices": {}}
    if ta.heads is not None:
        heads = difference_table(ta.heads, tb.heads)
        write_csv(heads, os.path.join(folder, "heads_diff.csv"))
        stats, _ = headline_statistics(config.analyses, ta.heads)
        for stat in stats:
            z = np.asarray(heads.get(f"{stat}_diff_z", np.full(len(heads["layer"]), np.nan)), float)
            i = int(np.nanargmax(np.abs(z))) if np.isfinite(z).any() else 0
            summary["heads"][stat] = {
                "mean_diff": json_value(np.nanmean(heads[f"{stat}_diff"])),
                "share_beyond_2": float(np.mean(np.abs(np.nan_to_num(z)) > 2)),
                "max_abs_z": json_value(abs(z[i])), "max_layer": int(heads["layer"][i]), "max_head": int(heads["head"][i]),
            }
        per_a, per_b = layer_means(ta.heads, stats), layer_means(tb.heads, stats)
        write_csv(difference_table(per_a, per_b), os.path.join(folder, "layers_diff.csv"))
        groups = layer_groups(per_a["layer"], NUM_GROUPS)
        ga, gb = group_means(per_a, stats, groups), group_means(per_b, stats, groups)
        table = {"group": ga["group"]}
        for stat in stats:
            table[f"{stat}_{labels[0]}"], table[f"{stat}_{labels[1]}"] = ga[stat], gb[stat]
            table[f"{stat}_relative_change"] = relative_change(ga[stat], gb[stat])
        write_csv(table, os.path.join(folder, "groups_diff.csv"))
        headline = "ssr_qk" if "ssr_qk" in stats else stats[0]
        summary["layer_groups"] = {
            "layers": list(table["group"]), f"{headline} {labels[0]}": list(table[f"{headline}_{labels[0]}"]),
            f"{headline} {labels[1]}": list(table[f"{headline}_{labels[1]}"]),
            "relative change": list(table[f"{headline}_relative_change"]),
        }
        for stat in [s for s in ("ssr_qk", "pearson_qk", "kernel_erank") if s in stats and config.plots]:
            plots.compare_trend(per_a, per_b, stat, os.path.join(folder, "plots", f"compare_{stat}.png"), labels=labels,
                                title=f"{stat}: per-layer mean over heads")
            if f"{stat}_diff_z" in heads:
                plots.head_heatmap(heads, f"{stat}_diff_z", os.path.join(folder, "plots", f"heatmap_{stat}_diff_z.png"),
                                   title=f"{stat}: ({labels[1]} − {labels[0]}) / null spread")
    if ta.matrices is not None:
        matrices = difference_table(ta.matrices, tb.matrices)
        write_csv(matrices, os.path.join(folder, "matrices_diff.csv"))
        for stat in statistic_columns(ta.matrices):
            if f"{stat}_diff_z" not in matrices:
                continue
            z = np.abs(np.nan_to_num(matrices[f"{stat}_diff_z"]))
            moved = np.flatnonzero(z > 2)
            summary["matrices"][stat] = {
                "count": int(moved.size), "total": int(z.size),
                "examples": [f"layer {matrices['layer'][i]} {matrices['matrix'][i]}" for i in moved[:5]],
            }
        if "erank_diff_z" in matrices and config.plots:
            plots.matrix_heatmap(matrices, "erank_diff_z", os.path.join(folder, "plots", "heatmap_matrices_erank_diff_z.png"),
                                 title=f"effective rank: ({labels[1]} − {labels[0]}) / null spread")
    return summary

