"""The subspace document's structural table (the reasoning-subspace plan): bottleneck layer, FFN alignment, adjacent-layer
similarity of QK-kernel subspaces, each beside its null.

Source: the reasoning-subspace plan ("Z HUNT: The Recipe"), "Why we believe it's there", measured on Qwen2.5-3B (E = 2048,
H = 16, KV = 2, D = 128):

    L33 attention heads collapse to eff rank ~78 (mean 80.4, std 6.0)   -> "bottleneck"
    All 16 heads converge to same rank at L33 (CV < 0.08)
    FFN alignment at L33: 0.57x chance (0.0056 vs k/d = 0.0098)          -> "actively avoids attention"
    L32<->L33 similarity = 0.482 (2x any other pair)

Per head, the QK kernel is K_h = W_Q,h^T W_K,g (E x E, rank <= D). Its effective rank (Roy-Vetterli,
on singular values) per layer is the mean over heads; the bottleneck is the layer with the lowest
mean. FFN alignment = ||W_gate P||_F^2 / ||W_gate||_F^2 with P the projector on the head's top-k
key-side kernel subspace (what the source's code computed), chance k/E. Similarity of two layers =
mean squared cosine of the principal angles between their top-k subspaces, chance k/E.

What spectrax adds: the null of each number. Kernel effective rank of two independent Gaussian
W_Q,h, W_K,g of the same shapes (Monte Carlo, exact in law); the exact null of the FFN alignment
for a uniformly random k-subspace (mean k/E, variance from W_gate's spectrum); the exact Grassmann
null (mean k/E) of the similarities. A "bottleneck" exists in any model (some layer has the lowest
mean); it is a finding only if its effective rank lies below the null (spectrax's criterion:
more than 3 null std *of the layer mean* below the null mean, z < -3 of the layer mean; the lowest
of L random layers falls that low with probability about L x 0.13%, e.g. 5% for 36 layers). The
CV over heads is shown beside the CV independent Gaussian heads would have (one head's null std /
null mean); the findings table calls it "more spread" / "more uniform" than Gaussian heads beyond a
factor of 2 either way. The largest adjacent similarity is likewise the maximum over L - 1 pairs;
its z is the mean over heads of the per-head z.

    python experiments/kernel_bottleneck.py CKPT --out DIR [--top-k 20] [--layers 30-35]

`--top-k` defaults to 20, the source's k (its chance level 0.0098 = 20/2048); it is clipped to the
head dimension. Writes `kernel_layers.csv` (per layer), `kernel_findings.csv` (one row per
claim), `kernel_similarity.csv` (layer x layer, mean over heads) and `heads.csv`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from experiments._common import (  # noqa: E402
    add_common_options,
    checkpoint_labels,
    fmt,
    markdown,
    output_folder,
    parse_layers,
    run_main,
    write_table,
)
from spectrax.run import Options, collect  # noqa: E402
from spectrax.analyses.aggregate import layer_means  # noqa: E402
from spectrax.analyses.kernel import kernel_summary, layer_similarity  # noqa: E402
from spectrax.io.load import open_source  # noqa: E402

__all__ = ["SOURCE_TOP_K", "findings_table", "layer_table", "main"]

SOURCE_TOP_K = 20


def layer_table(summary: dict, heads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per layer: `kernel_summary`'s layer values, the null CV, the squared-spectrum effective rank
    (the other common definition) with its null, and the similarity to the next analyzed layer."""
    layers = summary["layers"]
    means = layer_means(heads, ["kernel_erank_squared"])
    adjacent = {}
    if summary["adjacent_similarity"] is not None:
        adjacent = {p["layers"][0]: p for p in summary["adjacent_similarity"]["pairs"]}

    def col(name):
        return np.array([np.nan if p[name] is None else p[name] for p in layers], float)

    ids = np.array([p["layer"] for p in layers])
    assert np.array_equal(ids, means["layer"])
    return {
        "layer": ids,
        "heads": np.array([p["heads"] for p in layers]),
        "kernel_erank": col("kernel_erank_mean"),
        "kernel_erank_null_mean": col("kernel_erank_null_mean"),
        "kernel_erank_null_std": col("kernel_erank_null_std"),
        "kernel_erank_z": col("kernel_erank_z"),
        "kernel_erank_cv": col("kernel_erank_cv"),
        # CV over independent Gaussian heads: one head's null spread over its mean
        "kernel_erank_null_cv": col("kernel_erank_head_null_std") / col("kernel_erank_null_mean"),
        "kernel_erank_squared": means["kernel_erank_squared"],
        "kernel_erank_squared_null_mean": means["kernel_erank_squared_null_mean"],
        "ffn_alignment": col("ffn_alignment_mean"),
        "ffn_alignment_ratio": col("ffn_alignment_ratio"),
        # the null std of the layer's mean alignment (query heads of one key head correlate:
        # kernel.ffn_alignment_layer_null_std), in units of chance like the ratio
        "ffn_alignment_ratio_null_std": col("ffn_alignment_null_std") / summary["chance"],
        "ffn_alignment_z": col("ffn_alignment_z"),
        "next_layer": np.array([adjacent[i]["layers"][1] if i in adjacent else -1 for i in ids]),
        "similarity_to_next": np.array([_num(adjacent[i]["similarity"]) if i in adjacent else np.nan for i in ids]),
        "similarity_to_next_z": np.array([_num(adjacent[i]["z"]) if i in adjacent else np.nan for i in ids]),
    }


def _num(x) -> float:
    return np.nan if x is None else float(x)


def findings_table(summary: dict, layers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row per claim of the source: observed value, its null, z and a verdict."""
    rows = []
    b = summary["bottleneck"]
    if b is not None:
        i = int(np.flatnonzero(layers["layer"] == b["layer"])[0])
        rows.append({"claim": "bottleneck: lowest mean kernel effective rank", "layer": str(b["layer"]),
                     "observed": _num(b["kernel_erank"]), "null_mean": _num(b["kernel_erank_null_mean"]),
                     "null_std": _num(b["kernel_erank_null_std"]), "z": _num(b["kernel_erank_z"]),
                     "verdict": "below null (> 3 null std)" if b["below_null_3std"] else "within null spread"})
        cv, null_cv = layers["kernel_erank_cv"][i], layers["kernel_erank_null_cv"][i]
        # A CV has no z here (one value per layer); a factor of 2 either way is a coarse, stated bar.
        rows.append({"claim": "heads agree at the bottleneck: CV of effective rank over heads", "layer": str(b["layer"]),
                     "observed": cv, "null_mean": null_cv, "null_std": np.nan, "z": np.nan,
                     "verdict": ("more spread than Gaussian heads" if cv > 2 * null_cv else
                                 "about as uniform as Gaussian heads" if cv > 0.5 * null_cv else
                                 "more uniform than Gaussian heads")})
        ffn_z = _num(b["ffn_alignment_z"])
        rows.append({"claim": "FFN alignment at the bottleneck (ratio to chance k/E)", "layer": str(b["layer"]),
                     "observed": _num(b["ffn_alignment_ratio"]), "null_mean": 1.0,
                     "null_std": layers["ffn_alignment_ratio_null_std"][i], "z": ffn_z,
                     "verdict": _verdict(ffn_z, "below chance", "above chance")})
    adjacent = summary["adjacent_similarity"]
    if adjacent is not None and adjacent["largest"] is not None:
        big = adjacent["largest"]
        others = [p["similarity"] for p in adjacent["pairs"] if p is not big and p["similarity"] is not None]
        rows.append({"claim": "most similar adjacent layers (Grassmann similarity)",
                     "layer": f"{big['layers'][0]}-{big['layers'][1]}", "observed": _num(big["similarity"]),
                     "null_mean": adjacent["chance"], "null_std": adjacent["null_std"], "z": _num(big["z"]),
                     "verdict": _verdict(_num(big["z"]), "below chance", "above chance")
                     + (f"; {big['similarity'] / np.median(others):.2f}x the median other pair" if others else "")})
    text = ("claim", "layer", "verdict")
    if not rows:
        return {c: np.array([], dtype=object if c in text else float) for c in
                ("claim", "layer", "observed", "null_mean", "null_std", "z", "verdict")}
    return {c: np.array([r[c] for r in rows], dtype=object if c in text else float) for c in rows[0]}


def _verdict(z: float, low: str, high: str) -> str:
    if not np.isfinite(z):
        return "n/a"
    return low if z < -2 else high if z > 2 else "at chance (abs z <= 2)"


def _render(label: str, summary: dict, layers: dict[str, np.ndarray], findings: dict[str, np.ndarray],
            num_draws: int) -> str:
    k, E = summary["top_k"], summary["hidden"]
    per_layer = {
        "layer": [str(int(x)) for x in layers["layer"]],
        "kernel erank": [fmt(x) for x in layers["kernel_erank"]],
        "null": [f"{fmt(m)} ± {fmt(s, 2)}" for m, s in zip(layers["kernel_erank_null_mean"], layers["kernel_erank_null_std"])],
        "z": [fmt(x, 3) for x in layers["kernel_erank_z"]],
        "CV over heads": [fmt(x, 3) for x in layers["kernel_erank_cv"]],
        "null CV": [fmt(x, 3) for x in layers["kernel_erank_null_cv"]],
        "FFN alignment / chance": [f"{fmt(x, 3)} ± {fmt(s, 2)}" for x, s in
                                   zip(layers["ffn_alignment_ratio"], layers["ffn_alignment_ratio_null_std"])],
        "FFN z": [fmt(x, 3) for x in layers["ffn_alignment_z"]],
        "similarity to next": [fmt(x, 3) for x in layers["similarity_to_next"]],
        "sim z": [fmt(x, 3) for x in layers["similarity_to_next_z"]],
    }
    note = (f"k = {k}, E = {E}, chance k/E = {fmt(k / E)}. Kernel effective rank: Roy-Vetterli on the kernel's "
            f"singular values (the squared-spectrum variant is in kernel_layers.csv); null: independent Gaussian "
            f"W_Q,h, W_K,g of the same shapes ({num_draws} draws per head, pooled over the layer's heads), ± = null std of the "
            "layer mean (counting query heads that share a key head); z = of the layer mean against that null. "
            "null CV = one head's null std / null mean (what independent Gaussian heads would show). FFN alignment / chance: "
            "± = null std of the layer mean in units of k/E (null mean 1); z = of the layer mean. Similarity: exact "
            "Grassmann null, mean k/E; sim z = mean per-head z.")
    shown = {
        "claim": findings["claim"], "layer": findings["layer"],
        "observed": [fmt(x) for x in findings["observed"]],
        "null": [fmt(m) if not np.isfinite(sd) else f"{fmt(m)} ± {fmt(sd, 2)}"
                 for m, sd in zip(findings["null_mean"], findings["null_std"])],
        "z": [fmt(x, 3) for x in findings["z"]], "verdict": findings["verdict"],
    }
    return (markdown(f"{label}: QK-kernel effective rank, FFN alignment and adjacent similarity per layer", per_layer,
                     note=note)
            + "\n" + markdown(f"{label}: the source's structural claims against their nulls", shown))


def run(checkpoint: str, out: str, *, top_k: int = SOURCE_TOP_K, num_draws: int = 16, seed: int = 0,
        layers: Sequence[int] | None = None, progress: bool = True) -> dict:
    """Analyze `checkpoint` (`kernel`) and write the tables into the new folder `out`; returns the
    library's `kernel_summary`."""
    (label,) = checkpoint_labels([checkpoint])
    with output_folder(out, [checkpoint]) as folder:
        source = open_source(checkpoint)
        tables = collect(source, analyses=["kernel"], layers=layers,
                         options=Options(num_draws=num_draws, seed=seed, top_k=top_k), progress=progress)
        k_eff = min(top_k, *source.spec.head_dims)  # the library clips k to the head dimension
        similarity = None
        if tables.kernel_bases is not None and tables.kernel_bases.shape[0] > 1:
            similarity = layer_similarity(tables.kernel_bases)
            ids = np.unique(tables.heads["layer"])
            a, b = np.meshgrid(ids, ids, indexing="ij")
            write_table({"layer_a": a.ravel(), "layer_b": b.ravel(), "similarity": np.nanmean(similarity, axis=0).ravel()},
                        folder, "kernel_similarity")
        summary = kernel_summary(tables.heads, similarity, top_k=k_eff, hidden=source.spec.hidden_size)
        per_layer = layer_table(summary, tables.heads)
        findings = findings_table(summary, per_layer)
        write_table(tables.heads, folder, "heads")
        write_table(per_layer, folder, "kernel_layers")
        write_table(findings, folder, "kernel_findings")
    print(_render(label, summary, per_layer, findings, num_draws))
    print(f"results in {os.path.abspath(out)}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint folder")
    parser.add_argument("--top-k", type=int, default=SOURCE_TOP_K,
                        help=f"dimension of each head's key-side kernel subspace (default {SOURCE_TOP_K}, the source's)")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(args.checkpoint, args.out, top_k=args.top_k, num_draws=args.null_draws, seed=args.seed,
            layers=parse_layers(args.layers), progress=not args.quiet)
        return 0

    return run_main("kernel_bottleneck", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
