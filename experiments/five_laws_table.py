"""The five-laws README's "Empirical Evidence" table (First and Second Law), beside its Gaussian null.

Source: the five-laws README (`emis-framework/math-under-llm`), the table under the First Law:

    | Model       | Median Pearson | Mean Pearson | Median SSR | Mean SSR | Layers |
    | Qwen2.5-14B | 0.9795         | 0.9710       | 0.006077   | 0.00671  | 48     |
    | DeepSeek-R1 | 0.9800         | 0.9714       | 0.005948   | 0.006585 | 48     |
    | llama-3-8b  | 0.9813         | 0.9737       | 0.006196   | 0.007009 | 32     |

Pearson is the correlation of the descending singular values of W_Q,h and W_K,g (query head h,
its key head g under GQA); SSR = mean_i |s_Q,i/||s_Q|| - s_K,i/||s_K|| |. Per-layer value = mean
over the layer's heads; model value = median / mean over layers (docs/statistics.md §1).

What spectrax corrects: the source reads "r -> 1, SSR -> 0" as a law of trained attention, but two
sorted spectra of independent Gaussian matrices already correlate at r ~ 0.99 or more, with an SSR
that shrinks as E/D grows. This table puts each value beside that null: the same statistic for
independent Gaussian matrices of the same shapes and RMS scale (Monte Carlo, `--null-draws`), its
mean over layers, and the mean z over heads. A model is "more aligned than random" only where its
Pearson lies above (SSR below) the null by more than the null's spread.

    python experiments/five_laws_table.py CKPT [CKPT ...] --out DIR [--null-draws 16] [--layers 0-11]

Writes `five_laws.csv` (one row per checkpoint, with the pseudo-bulk values too) and, per
checkpoint, `<name>/layers.csv` (per-layer means with null columns) and `<name>/heads.csv`.
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
from spectrax.analyses.aggregate import layer_means, model_values  # noqa: E402
from spectrax.io.load import open_source  # noqa: E402

__all__ = ["STATISTICS", "five_laws_row", "main"]

STATISTICS = ("pearson_qk", "ssr_qk")


def five_laws_row(label: str, heads: dict[str, np.ndarray], spec) -> dict:
    """The source's row for one checkpoint plus null columns, from a `laws` per-head table."""
    per_layer = layer_means(heads, STATISTICS)
    row = {"model": label, "head_dim": int(spec.head_dims[0]) if len(set(spec.head_dims)) == 1 else -1,
           "hidden": int(spec.hidden_size), "layers": int(per_layer["layer"].size)}
    for stat, short in (("pearson_qk", "pearson"), ("ssr_qk", "ssr")):
        values = model_values(heads, per_layer, stat)
        row.update({
            f"median_{short}": values["median_over_layers"],
            f"mean_{short}": values["mean_over_layers"],
            f"pseudo_bulk_{short}": values.get("pseudo_bulk"),
            f"{short}_null_mean": values.get("null_mean"),
            f"{short}_null_std": values.get("null_std"),
            f"{short}_mean_z": values.get("mean_z"),
        })
    return row


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    return {c: np.array([np.nan if r[c] is None else r[c] for r in rows],
                        dtype=object if c == "model" else None) for c in rows[0]}


def _render(rows: list[dict], num_draws: int) -> str:
    table = {
        "Model": [r["model"] for r in rows],
        "D, E": [f"{r['head_dim']}, {r['hidden']}" for r in rows],
        "Median Pearson": [fmt(r["median_pearson"]) for r in rows],
        "Mean Pearson": [fmt(r["mean_pearson"]) for r in rows],
        "Pearson null": [f"{fmt(r['pearson_null_mean'])} ± {fmt(r['pearson_null_std'], 2)}" for r in rows],
        "Pearson z": [fmt(r["pearson_mean_z"], 3) for r in rows],
        "Median SSR": [fmt(r["median_ssr"]) for r in rows],
        "Mean SSR": [fmt(r["mean_ssr"]) for r in rows],
        "SSR null": [f"{fmt(r['ssr_null_mean'])} ± {fmt(r['ssr_null_std'], 2)}" for r in rows],
        "SSR z": [fmt(r["ssr_mean_z"], 3) for r in rows],
        "Layers": [str(r["layers"]) for r in rows],
    }
    note = (f"Null: the same statistic for independent Gaussian W_Q,h and W_K,g of the same shapes and RMS "
            f"scale ({num_draws} draws per head), averaged over layers; ± is the per-head null std. z: mean over "
            "heads of (observed - null mean) / null std. Pearson above its null and SSR below it would mean Q/K "
            "spectra more alike than random matrices'; the reverse means less alike.")
    return markdown("Five laws, First/Second Law table (Q/K), with the Gaussian null", table, note=note)


def run(checkpoints: Sequence[str], out: str, *, num_draws: int = 16, seed: int = 0,
        layers: Sequence[int] | None = None, progress: bool = True) -> list[dict]:
    """Analyze each checkpoint (`laws` only) and write the tables into the new folder `out`."""
    labels = checkpoint_labels(checkpoints)
    options = Options(num_draws=num_draws, seed=seed)
    rows = []
    with output_folder(out, checkpoints) as folder:
        for label, path in zip(labels, checkpoints):
            source = open_source(path)
            tables = collect(source, analyses=["laws"], layers=layers, options=options, progress=progress)
            write_table(tables.heads, os.path.join(folder, label), "heads")
            write_table(layer_means(tables.heads, STATISTICS), os.path.join(folder, label), "layers")
            rows.append(five_laws_row(label, tables.heads, source.spec))
        write_table(_columns(rows), folder, "five_laws")
    print(_render(rows, num_draws))
    print(f"results in {os.path.abspath(out)}")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders (any family spectrax reads)")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(args.checkpoints, args.out, num_draws=args.null_draws, seed=args.seed,
            layers=parse_layers(args.layers), progress=not args.quiet)
        return 0

    return run_main("five_laws_table", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
