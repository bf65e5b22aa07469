"""Spectra of the residual stream, layer by layer, against isotropic Gaussian samples.

For each stream (0 = embeddings, l + 1 = after layer l) the centered hidden states of N = B*T tokens
form an (N, E) matrix; its effective rank, stable rank, Marchenko-Pastur distances and ESD fits
(spectrax's `rank` and `esd` statistics) are set beside the same statistics of Gaussian samples with
the same N, E and variance. z << 0 on effective rank: the stream lives in fewer directions than noise.

    python experiments/activation_spectra.py --out DIR [CHECKPOINT] [--ids ids.npy] [--null-draws 16]

Writes `streams.csv`, `summary.json` and `plots/erank.png`, `plots/stable_rank.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from experiments._common import markdown, output_folder, run_main, write_table  # noqa: E402
from experiments._activations import add_input_options, load_inputs  # noqa: E402

import jax  # noqa: E402

from spectrax.analyses.activations import hidden_state_rows  # noqa: E402
from spectrax.models import capture  # noqa: E402
from spectrax.report.plots import layer_trend  # noqa: E402

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(parser)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--null-draws", type=int, default=16, help="Gaussian-null draws (default 16)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        with output_folder(args.out, [args.checkpoint]) as folder:
            model, ids = load_inputs(args)
            acts = capture(model.params, model.spec, ids, attention=False)
            table = hidden_state_rows(acts.hidden, jax.random.key(args.seed), num_draws=args.null_draws)
            table = {"layer": table["stream"], **table}  # the plots' x axis: stream index
            write_table(table, folder, "streams")
            os.makedirs(os.path.join(folder, "plots"))
            for stat in ("erank", "stable_rank"):
                layer_trend(table, stat, os.path.join(folder, "plots", f"{stat}.png"),
                            title=f"residual stream {stat} (stream 0 = embeddings)")
            summary = {"checkpoint": os.path.abspath(args.checkpoint), "tokens": int(ids.size),
                       "sequences": int(ids.shape[0]), "hidden": model.spec.hidden_size,
                       "erank": table["erank"].tolist(), "erank_null_mean": table["erank_null_mean"].tolist(),
                       "erank_z": table["erank_z"].tolist()}
            with open(os.path.join(folder, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
        if not args.quiet:
            print(markdown(f"Residual-stream spectra ({ids.shape[0]} x {ids.shape[1]} tokens)", table,
                           ["stream", "erank", "erank_null_mean", "erank_z", "stable_rank", "stable_rank_z",
                            "num_spikes", "num_spikes_null_mean"]))
            print(f"results in {os.path.abspath(args.out)}")
        return 0

    return run_main("activation_spectra", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
