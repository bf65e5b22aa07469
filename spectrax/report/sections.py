"""`report.md` and the files beside it: the header, each analysis's `Section` (its text, tables
and figures), the list of files, and the comparison of two checkpoints.

Nothing here computes a statistic: the analyses summarize and describe their sections
(`Analysis.render`), this module writes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from spectrax.analyses.base import Section
from spectrax.analyses.tables import format_number, list_markdown
from spectrax.report import plots as figures
from spectrax.report.tables import write_csv

__all__ = ["header", "write_section", "files", "compare"]


def write_section(section: Section, folder: str | os.PathLike, plots: str | os.PathLike | None) -> str:
    """Write a section's tables (CSV) into `folder` and its figures into the folder `plots` (none
    when None); returns its Markdown text."""
    for name, table in section.tables.items():
        write_csv(table, os.path.join(folder, name))
    if plots is not None:
        for plot in section.plots:
            figures.draw(plot, plots)
        for spectrum in section.spectra:
            figures.draw_spectrum(spectrum, plots)
    return section.text


def header(summary: dict, *, plots: bool = True) -> str:
    spec, options = summary["spec"], summary["options"]
    layers = summary["layers"]
    chosen = "all layers" if len(layers) == spec["num_layers"] else f"layers {layers}"
    return "\n".join([
        f"# Spectral statistics: {summary['hub']['repo'] if summary.get('hub') else os.path.basename(summary['checkpoint'])}",
        "",
        *([f"Hub repo {summary['hub']['repo']} at commit {summary['hub']['sha']}.", ""] if summary.get("hub") else []),
        f"{spec['model_type']}, {spec['num_layers']} layers ({chosen} analyzed), {spec['num_heads']} query / "
        f"{spec['num_kv_heads']} key-value heads of {spec['head_dims'][0]} x {spec['hidden_size']}. Every statistic "
        f"is set against a null: shape- and scale-matched Gaussian matrices ({options['num_draws']} Monte Carlo "
        f"draws, seed {options['seed']}) or an exact value. A z-score near 0 means the weights do what random "
        "matrices of the same shape do anyway.",
        "",
        *(["Figures were not drawn (`--no-plots`); the `plots/` files named below are those a run with "
           "figures draws.", ""] if not plots else []),
        *([f"{summary['skipped_matrices']} stored 2-D weights are not analyzed as whole matrices; `skipped.csv` "
           "lists each with its shape and the reason.", ""] if summary.get("skipped_matrices") else []),
    ])


def files(names: Sequence[str], plots: Sequence[str]) -> str:
    described = {
        "heads.csv": "one row per (layer, query head), each statistic with `_null_mean`, `_null_std`, `_z`, effect "
                     "sizes `_diff` and `_ratio`, and Monte Carlo errors `_null_mean_se`, `_null_std_se`",
        "layers.csv": "per-layer means over heads (with null columns) and pseudo-bulk medians (`_bulk`)",
        "groups.csv": "layer-group means", "precision.csv": "third-law depth limits per format",
        "matrices.csv": "one row per weight matrix (layer -1: embedding, output head)",
        "kernel_similarity.csv": "layer x layer similarity of kernel subspaces",
        "skipped.csv": "every stored 2-D weight not analyzed as a whole matrix (fused projections, a tied output "
                       "head, tensors of more axes, other towers), with its shape and the reason",
        "summary.json": "model-level values, options, timings",
    }
    lines = ["## Files", ""]
    lines += [f"- `{n}`: {described[n]}" for n in names if n in described]
    if plots:
        lines.append(f"- `plots/`: {', '.join(f'`{p}`' for p in plots)}")
    lines.append("")
    return "\n".join(lines)


def compare(summary: dict) -> str:
    a, b = summary["labels"]
    hubs = [f"{label}: Hub repo {hub['repo']} at commit {hub['sha']}."
            for label, hub in zip((a, b), summary.get("hubs", ())) if hub]
    lines = [
        f"# Comparison: {a} vs {b}",
        "",
        f"Both checkpoints analyzed with the same settings ({a}/ and {b}/ hold the full results). Differences are "
        f"{b} − {a}; `_diff_z` divides by the spread of the difference of two independent null draws, "
        "sqrt(std_a² + std_b²), so |z| < 2 is a difference random matrices of these shapes produce by chance. "
        f"Relative change per layer group is ({a} − {b}) / {a}, the \"improvement\" of the five-laws source (`emis-framework/math-under-llm`).",
        "",
        *hubs,
        *([""] if hubs else []),
    ]
    if summary.get("layer_groups"):
        lines += ["Layer groups:", "", list_markdown(summary["layer_groups"]), ""]
    lines += ["Per-head differences beyond ±2 null spreads (share of heads):", ""]
    lines += [f"- `{stat}`: {v['share_beyond_2']:.1%} of heads, mean difference {format_number(v['mean_diff'])}, largest |z| "
              f"{format_number(v['max_abs_z'], 3)} at layer {v['max_layer']} head {v['max_head']}"
              for stat, v in summary["heads"].items()]
    lines.append("")
    if summary.get("matrices"):
        lines += ["Weight matrices whose statistics moved beyond ±2 null spreads:", ""]
        lines += [f"- `{stat}`: {v['count']} of {v['total']} matrices" + (f", e.g. {v['examples']}" if v["examples"] else "")
                  for stat, v in summary["matrices"].items()]
        lines.append("")
    return "\n".join(lines)
