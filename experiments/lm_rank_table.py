"""The prime-gap README's pretrained-LM table (the prime-gap README): effective rank, max/mean, KS distance, each
with its Gaussian null, on the source's 256 x 256 crop and on whole matrices.

Source: the prime-gap README ("Emergent Low-Rank Structure ..."), "Control Experiments (11 Pretrained
Language Models)", computed on the top-left 256 x 256 block of the first attention matrix found:

    | Model        | Effective Rank | Max/Mean Ratio | KS Distance to Random |
    | Qwen2.5-3B   | 199.02         | 3.68           | 0.9531                |
    | gpt2         | 156.76         | 4.35           | 0.7656                |
    | TinyLlama    | 38.41          | 43.25          | 0.9648                |
    Random (baseline): effective rank 254.5 +- 0.9, max/mean 2.35 +- 0.09

Effective rank = exp(entropy of s / sum s) (Roy-Vetterli); max/mean = s_1 / mean(s). The source's
KS distance compares the raw singular values with those of a unit-variance Gaussian matrix.

What spectrax corrects, and what this table shows:

1. Scale. Trained weights have entries of size ~1/sqrt(E), not 1, so the raw KS distance to a
   unit-variance Gaussian is near 1 for any weight, random ones included. The column
   `source KS` recomputes the source's statistic (raw singular values of the crop against a pooled
   sample of unit-variance Gaussian 256 x 256 matrices) and its null: the same statistic for a
   Gaussian matrix with the crop's own RMS entry. spectrax's own distances are scale-free:
   `ks_gauss` (s / mean(s) against the same for shape-matched Gaussians) and `ks_mp` (against the
   Marchenko-Pastur law of the same aspect ratio, after a scale fit), each with a Monte Carlo null.
2. Crop. A 256 x 256 block is 2 heads x 256 input dimensions of W_Q for D = 128; the whole
   matrix is another object. The second table gives each attention matrix whole, averaged over
   the analyzed layers, beside the null of its own shape.

Every effective rank and max/mean comes with the null for Gaussian matrices of the same shape
(`null`, Monte Carlo) and z = (observed - null mean) / null std.

    python experiments/lm_rank_table.py CKPT [CKPT ...] --out DIR [--crop 256] [--matrix attn.q] [--layers 0-3]

`--layers` limits the whole-matrix part (all layers by default; every 2-D weight of each layer is
analyzed, which is the slow part for large models); the crop uses the first analyzed layer.
Writes `crop.csv` (one row per checkpoint), `whole.csv` (one row per checkpoint and attention
matrix) and `<name>/matrices_crop.csv`, `<name>/matrices_whole.csv`.
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

# isort: off
import jax  # noqa: E402
# isort: on
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
from spectrax.analyses.aggregate import finite_mean  # noqa: E402
from spectrax.analyses.weights import layer_matrices  # noqa: E402
from spectrax.dynamics.prime_gaps import source_ks  # noqa: E402
from spectrax.io.load import open_source, stream_layers  # noqa: E402

__all__ = ["ATTENTION", "STATISTICS", "crop_row", "main", "whole_rows"]

ATTENTION = ("attn.q", "attn.k", "attn.v", "attn.o")
STATISTICS = ("erank", "max_mean", "ks_gauss", "ks_mp")


def _row_stats(matrices: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    """Means over `rows` of each statistic, its null mean, null std and z."""
    out = {}
    for stat in STATISTICS:
        for suffix in ("", "_null_mean", "_null_std", "_z"):
            out[stat + suffix] = finite_mean(np.asarray(matrices[stat + suffix], float)[rows])
    return out


def crop_row(label: str, matrices: dict[str, np.ndarray], layer: int, matrix: str,
             ks: tuple[float, float, float]) -> dict:
    """The source-protocol row: the cropped `matrix` of `layer` from a cropped `rank` table."""
    rows = (np.asarray(matrices["layer"]) == layer) & (np.asarray(matrices["matrix"]) == matrix)
    if rows.sum() != 1:
        raise ValueError(f"no {matrix!r} in layer {layer}; choose --matrix from {sorted(set(matrices['matrix']))}")
    i = int(np.flatnonzero(rows)[0])
    return {"model": label, "layer": layer, "matrix": matrix, "rows": int(matrices["rows"][i]),
            "cols": int(matrices["cols"][i]), **_row_stats(matrices, rows),
            "source_ks": ks[0], "source_ks_null_mean": ks[1], "source_ks_null_std": ks[2]}


def whole_rows(label: str, matrices: dict[str, np.ndarray]) -> list[dict]:
    """One row per attention matrix kind: means over the analyzed layers of whole-matrix statistics."""
    out = []
    kinds = np.asarray(matrices["matrix"])
    inside = np.asarray(matrices["layer"]) >= 0  # layer -1 holds the embedding and output head
    for kind in ATTENTION:
        rows = inside & (kinds == kind)
        if not rows.any():
            continue
        i = int(np.flatnonzero(rows)[0])
        out.append({"model": label, "matrix": kind, "rows": int(matrices["rows"][i]), "cols": int(matrices["cols"][i]),
                    "layers": int(rows.sum()), **_row_stats(matrices, rows)})
    return out


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    text = ("model", "matrix")
    return {c: np.array([r[c] for r in rows], dtype=object if c in text else None) for c in rows[0]}


def _with_null(row: dict, stat: str, digits: int = 4) -> str:
    return f"{fmt(row[stat], digits)} ({fmt(row[stat + '_null_mean'], digits)} ± {fmt(row[stat + '_null_std'], 2)})"


def _render(crop: list[dict], whole: list[dict], crop_size: int | None, num_draws: int) -> str:
    block = "whole matrix" if crop_size is None else f"top-left {crop_size}x{crop_size}"
    first = {
        "Model": [r["model"] for r in crop],
        "matrix": [f"L{r['layer']} {r['matrix']} {r['rows']}x{r['cols']}" for r in crop],
        "Effective Rank (null ± std)": [_with_null(r, "erank") for r in crop],
        "z": [fmt(r["erank_z"], 3) for r in crop],
        "Max/Mean (null ± std)": [_with_null(r, "max_mean") for r in crop],
        "z ": [fmt(r["max_mean_z"], 3) for r in crop],
        "source KS, raw s vs N(0,1) (null)": [_with_null(r, "source_ks") for r in crop],
        "scale-free KS to Gaussian (null)": [_with_null(r, "ks_gauss") for r in crop],
        "z  ": [fmt(r["ks_gauss_z"], 3) for r in crop],
    }
    note_first = (f"The source's protocol: {block} of the first analyzed layer's matrix. Nulls: Gaussian matrices "
                  f"of the same shape ({num_draws} draws). 'source KS' is the source's statistic (raw singular values "
                  "against a unit-variance Gaussian); its null is the same statistic for a Gaussian matrix with the "
                  "crop's own RMS entry, i.e. what a random matrix of this scale scores.")
    second = {
        "Model": [r["model"] for r in whole],
        "matrix": [f"{r['matrix']} {r['rows']}x{r['cols']}" for r in whole],
        "layers": [str(r["layers"]) for r in whole],
        "Effective Rank (null ± std)": [_with_null(r, "erank") for r in whole],
        "z": [fmt(r["erank_z"], 3) for r in whole],
        "Max/Mean (null ± std)": [_with_null(r, "max_mean") for r in whole],
        "z ": [fmt(r["max_mean_z"], 3) for r in whole],
        "KS to Marchenko-Pastur (null)": [_with_null(r, "ks_mp") for r in whole],
        "z  ": [fmt(r["ks_mp_z"], 3) for r in whole],
    }
    note_second = ("Whole attention matrices, each statistic, its null and z averaged over the analyzed layers "
                   "(W_O as (H*D, E): the same singular values).")
    return (markdown("Pretrained-LM table (the prime-gap README) on the source's crop, with nulls", first, note=note_first) + "\n"
            + markdown("The same statistics on whole attention matrices, mean over layers", second, note=note_second))


def run(checkpoints: Sequence[str], out: str, *, crop: int | None = 256, matrix: str = "attn.q", num_draws: int = 16,
        seed: int = 0, layers: Sequence[int] | None = None, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Analyze each checkpoint (`rank`, cropped on one layer, whole on `layers`) into the new folder `out`."""
    if crop is not None and crop < 2:
        raise ValueError(f"--crop must be >= 2, got {crop}")
    labels = checkpoint_labels(checkpoints)
    crops, wholes = [], []
    with output_folder(out, checkpoints) as folder:
        for label, path in zip(labels, checkpoints):
            source = open_source(path)
            chosen = list(range(source.spec.num_layers)) if layers is None else sorted(set(layers))
            first = chosen[0]
            # The source's KS needs the cropped weight itself; reading it first also checks --matrix
            # before the slow part.
            (block,) = list(stream_layers(source, layers=[first]))
            weights = dict(layer_matrices(jax.tree.map(lambda x: x[0], block.params)))
            if matrix not in weights:
                raise ValueError(f"no {matrix!r} in layer {first}; choose --matrix from {sorted(weights)}")
            w = weights[matrix] if crop is None else weights[matrix][:crop, :crop]
            ks = source_ks(w, jax.random.key(seed), num_draws)
            del block, weights
            cropped = collect(source, analyses=["rank"], layers=[first],
                              options=Options(num_draws=num_draws, seed=seed, crop=crop), progress=progress).matrices
            whole = collect(source, analyses=["rank"], layers=chosen,
                            options=Options(num_draws=num_draws, seed=seed), progress=progress).matrices
            crops.append(crop_row(label, cropped, first, matrix, ks))
            wholes.extend(whole_rows(label, whole))
            write_table(cropped, os.path.join(folder, label), "matrices_crop")
            write_table(whole, os.path.join(folder, label), "matrices_whole")
        write_table(_columns(crops), folder, "crop")
        write_table(_columns(wholes), folder, "whole")
    print(_render(crops, wholes, crop, num_draws))
    print(f"results in {os.path.abspath(out)}")
    return crops, wholes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders (any family spectrax reads)")
    parser.add_argument("--crop", type=int, default=256,
                        help="top-left block size of the source's protocol (default 256; 0 = whole matrix)")
    parser.add_argument("--matrix", default="attn.q",
                        help="the 'first attention matrix' of the crop (default attn.q; attn.k, attn.v, attn.o, mlp.*)")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(args.checkpoints, args.out, crop=args.crop or None, matrix=args.matrix, num_draws=args.null_draws,
            seed=args.seed, layers=parse_layers(args.layers), progress=not args.quiet)
        return 0

    return run_main("lm_rank_table", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
