"""The Markdown sections of `report.md`: what was measured, against which null, what stands out.

Each function takes the JSON-ready summary an analysis produced and returns text; none computes
statistics.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from spectrax.report.tables import format_number, short_list, to_markdown

__all__ = ["header", "laws", "rank", "esd", "kernel", "files", "compare"]

_Z_NOTABLE = 3.0


def _table(rows: dict[str, list]) -> str:
    return to_markdown({k: np.array(v, dtype=object if any(isinstance(x, str) for x in v) else float)
                        for k, v in rows.items()})


def header(summary: dict) -> str:
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
    ])


def laws(summary: dict) -> str:
    model = summary["model"]
    rows: dict[str, list] = {"statistic": [], "median over layers": [], "mean over layers": [], "pseudo-bulk": [],
                             "null mean": [], "null std": [], "mean z": []}
    for stat, v in model.items():
        for column, key in (("statistic", None), ("median over layers", "median_over_layers"),
                            ("mean over layers", "mean_over_layers"), ("pseudo-bulk", "pseudo_bulk"),
                            ("null mean", "null_mean"), ("null std", "null_std"), ("mean z", "mean_z")):
            rows[column].append(stat if key is None else v.get(key))
    lines = [
        "## Per-head statistics (laws)",
        "",
        "For every query head h and its key/value head g = h // (H/KV): the Pearson correlation and spectral "
        "shape residual (SSR) of the singular values of W_Q,h and W_K,g (`_qk`), of W_Q,h and W_V,g (`_qv`), and of "
        "W_K,g and W_V,g (`_kv`); the mean |cosine| of index-matched left (`cos_u`) and right (`cos_v`) singular "
        "vectors; and the Grassmann similarity of their row spaces. Spectrum statistics are set against "
        "Monte Carlo Gaussian spectra; cosine and Grassmann nulls are exact (E|cos| = Γ(d/2)/(√π Γ((d+1)/2)), "
        "Grassmann k/d). Aggregated as the source does: per-layer mean over heads, then median and mean over "
        "layers; pseudo-bulk = median over the query heads of each (layer, KV head), then median across groups.",
        "",
        _table(rows),
        "",
        "Layer groups (four equal blocks of layers; `groups.csv` has every statistic):",
        "",
        _table({"layers": list(summary["groups"]),
                "ssr_qk": [g["ssr_qk"] for g in summary["groups"].values()],
                "ssr_qk null": [g["ssr_qk_null_mean"] for g in summary["groups"].values()],
                "pearson_qk": [g["pearson_qk"] for g in summary["groups"].values()]}),
        "",
        "What stands out:",
        "",
    ]
    notable = [(s, v) for s, v in model.items() if v.get("mean_z") is not None and abs(v["mean_z"]) > _Z_NOTABLE]
    if notable:
        lines += [f"- `{s}` departs from the random null: mean z = {v['mean_z']:.1f} "
                  f"(observed {format_number(v['median_over_layers'])} vs null {format_number(v['null_mean'])})." for s, v in notable]
    else:
        lines.append(f"- No statistic departs from its random null by more than {_Z_NOTABLE:g} standard deviations on average.")
    pearson = model.get("pearson_qk", {})
    if pearson.get("null_mean") and pearson["null_mean"] > 0.9:
        lines.append(f"- Pearson r of sorted Q/K spectra is {pearson['null_mean']:.3f} for random matrices already: "
                     "a value near 1 is not, by itself, evidence of structure.")
    if summary["nonfinite_heads"]:
        lines.append(f"- {len(summary['nonfinite_heads'])} heads hold NaN/Inf weights (layer, head): "
                     f"{summary['nonfinite_heads'][:10]}; their statistics are NaN.")
    degenerate = summary.get("degenerate_heads", [])
    if degenerate:
        shown = short_list((f"layer {l} head {h} ({what})" for l, h, what in degenerate), 10)
        lines.append(f"- {len(degenerate)} heads have a zero, subnormal or rank-deficient matrix: {shown}"
                     + "; the statistics these leave undefined are empty (`degenerate` column of `heads.csv`).")
    precision = summary["precision"]
    lines += [
        "",
        "\"Third law\" depth limits, L_max = min(L_info = 1/mean SSR_qk, L_quant = 3·2^(2m), L_dyn = "
        "log2(max finite)/log2 κ), with κ = 2 as the source fixes it and with the median measured condition "
        f"number of the Q and K heads (κ = {format_number(summary['median_cond_qk'])}); the formula is the source's heuristic, "
        "not a derived bound (`precision.csv`):",
        "",
        _table({"format": list(precision),
                **{c: [row[c] for row in precision.values()]
                   for c in ("mantissa_bits", "L_info", "L_quant", "L_dyn_fixed", "L_dyn_measured", "L_max_fixed",
                             "L_max_measured", "binding_measured")}}),
        "",
    ]
    return "\n".join(lines)


def rank(by_kind: dict, crop: int | None) -> str:
    kinds = list(by_kind)
    rows: dict[str, list] = {"matrix": kinds}
    for stat in ("erank", "stable_rank", "max_mean", "ks_mp"):
        rows[stat] = [by_kind[k][stat]["mean"] for k in kinds]
        rows[f"{stat} null"] = [by_kind[k][stat]["null_mean"] for k in kinds]
        rows[f"{stat} z"] = [by_kind[k][stat]["z"] for k in kinds]
    cropped = f" (top-left {crop}x{crop} block only, as in the source)" if crop else ""
    return "\n".join([
        "## Whole-matrix statistics (rank)",
        "",
        f"Effective rank, stable rank, max/mean singular value and the KS distance of the scale-normalized "
        f"spectrum to Marchenko-Pastur, for every weight matrix{cropped}; mean over layers per matrix kind "
        "(`embed.tokens`/`lm_head` are single matrices). z: mean over layers of the z-score against "
        "shape-matched Gaussian matrices.",
        "",
        _table(rows),
        "",
    ])


def esd(by_kind: dict, shuffle_draws: int) -> str:
    kinds = list(by_kind)
    rows: dict[str, list] = {"matrix": kinds}
    for stat in ("alpha", "num_spikes"):
        if stat not in by_kind[kinds[0]]:
            continue
        rows[stat] = [by_kind[k][stat]["mean"] for k in kinds]
        rows[f"{stat} Gaussian null"] = [by_kind[k][stat]["null_mean"] for k in kinds]
        rows[f"{stat} shuffled"] = [by_kind[k][stat].get("shuffle_mean") for k in kinds]
    shuffled = (f"and against the same matrix with its entries shuffled ({shuffle_draws} draws: the entry "
                "distribution kept, the correlations destroyed)" if shuffle_draws else
                "(shuffled baselines were skipped: `--shuffle-draws 0`)")
    return "\n".join([
        "## Empirical spectral densities (esd)",
        "",
        "WeightWatcher-style: eigenvalues λ = s²/max(m, n) of every weight matrix, a Marchenko-Pastur fit "
        "(bulk edge, spikes above it) and the power-law tail exponent α (maximum likelihood, x_min by minimum "
        f"KS), each against shape-matched Gaussian matrices {shuffled}. A heavy tail that the shuffled matrix "
        "shares comes from the entry distribution, not from learned correlations. Mean over layers per kind:",
        "",
        _table(rows),
        "",
    ])


def kernel(summary: dict) -> str:
    k, chance = summary["top_k"], summary["chance"]
    lines = [
        "## QK-kernel subspaces (kernel)",
        "",
        "For every query head the kernel K_h = W_Q,hᵀ W_K,g (E x E, rank <= D) is decomposed from QR factors "
        "of both sides, never formed. Its effective rank is set against kernels of shape- and scale-matched "
        "Gaussian W_Q, W_K (drawn exactly in law from Bartlett factors); the \"bottleneck\" is the layer of lowest "
        f"mean effective rank. FFN alignment is the fraction of the MLP input matrix's energy inside the head's "
        f"top-{k} key-side kernel subspace (exact null: mean k/E = {chance:.4g} for any matrix, std from its "
        "spectrum). Layer x layer similarity is the Grassmann similarity of those subspaces (chance k/E). Heads "
        "sharing a KV head share W_K.",
        "",
        _table({
            "layer": [p["layer"] for p in summary["layers"]],
            "kernel erank": [p["kernel_erank_mean"] for p in summary["layers"]],
            "null": [p["kernel_erank_null_mean"] for p in summary["layers"]],
            "z": [p["kernel_erank_z"] for p in summary["layers"]],
            "CV over heads": [p["kernel_erank_cv"] for p in summary["layers"]],
            "FFN alignment / chance": [p["ffn_alignment_ratio"] for p in summary["layers"]],
            "FFN z": [p["ffn_alignment_z"] for p in summary["layers"]],
        }),
        "",
        "What stands out:",
        "",
    ]
    b = summary.get("bottleneck")
    if b:
        verdict = ("more than 3 null std below random kernels" if b["below_null_3std"]
                   else "within 3 null std of random kernels: the lowest of the layers, but not distinguishable from what random heads of this shape give")
        lines.append(f"- The bottleneck (lowest mean kernel effective rank) is layer {b['layer']}: {format_number(b['kernel_erank'])} "
                     f"vs {format_number(b['kernel_erank_null_mean'])} ± {format_number(b['kernel_erank_null_std'], 2)} for random kernels, {verdict}.")
        z = b["ffn_alignment_z"]
        verdict = ("no more and no less than a random subspace would" if z is None or abs(z) < 2 else
                   "more than a random subspace would" if z > 0 else "less than a random subspace would")
        lines.append(f"- FFN alignment at the bottleneck is {format_number(b['ffn_alignment_ratio'], 3)}x chance (mean z "
                     f"{format_number(z, 3)}): the MLP input overlaps the heads' kernel subspaces {verdict}.")
    adjacent = summary.get("adjacent_similarity")
    if adjacent and adjacent.get("largest"):
        top = adjacent["largest"]
        lines.append(f"- The most similar adjacent layers are {top['layers'][0]} and {top['layers'][1]}: similarity "
                     f"{format_number(top['similarity'], 3)} vs chance {format_number(adjacent['chance'], 3)} ± {format_number(adjacent['null_std'], 2)} "
                     f"(mean z {format_number(top['z'], 3)}).")
    lines.append("")
    return "\n".join(lines)


def files(names: Sequence[str], plots: Sequence[str]) -> str:
    described = {
        "heads.csv": "one row per (layer, query head), each statistic with `_null_mean`, `_null_std`, `_z`",
        "layers.csv": "per-layer means over heads (with null columns) and pseudo-bulk medians (`_bulk`)",
        "groups.csv": "layer-group means", "precision.csv": "third-law depth limits per format",
        "matrices.csv": "one row per weight matrix (layer -1: embedding, output head)",
        "kernel_similarity.csv": "layer x layer similarity of kernel subspaces",
        "summary.json": "model-level values, options, timings",
    }
    lines = ["## Files", ""]
    lines += [f"- `{n}`: {described[n]}" for n in names if n in described]
    lines.append(f"- `plots/`: {', '.join(f'`{p}`' for p in plots)}")
    lines.append("")
    return "\n".join(lines)


def compare(summary: dict) -> str:
    a, b = summary["labels"]
    lines = [
        f"# Comparison: {a} vs {b}",
        "",
        f"Both checkpoints analyzed with the same settings ({a}/ and {b}/ hold the full results). Differences are "
        f"{b} − {a}; `_diff_z` divides by the spread of the difference of two independent null draws, "
        "sqrt(std_a² + std_b²), so |z| < 2 is a difference random matrices of these shapes produce by chance. "
        f"Relative change per layer group is ({a} − {b}) / {a}, the source's \"improvement\".",
        "",
    ]
    if summary.get("layer_groups"):
        lines += ["Layer groups:", "", _table(summary["layer_groups"]), ""]
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
