"""H/G/Z alignments (docs/dynamics.md, Setups) of a real checkpoint's q/k/v projections, against random bases.

For each layer l and projection P in {q, k, v}: h_a = the normed residual stream entering layer l's
attention (N = B*T tokens), h_b = P's output W h_a + b, g_b = the gradient of the next-token loss at
h_b (from `spectrax.models.activation_grads`), W = P's weight `(heads*D, E)`. The six alignments and
the basis-paired spectral power law are set beside the same statistics with every matrix rotated
into an independent random eigenbasis (`spectrax.spectral.alignment`).

    python experiments/activation_alignment.py --out DIR [CHECKPOINT] [--ids ids.npy] [--null-draws 32]

Writes `alignment.csv`, `summary.json` and `plots/alignment_z.png`.
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
from experiments._activations import add_input_options, attention_inputs, load_inputs, next_token_loss  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.analyses.activations import projection_alignment_rows, projection_inputs  # noqa: E402
from spectrax.models import activation_grads  # noqa: E402
from spectrax.report.plots import save_figure, subplots  # noqa: E402
from spectrax.spectral.alignment import ALIGNMENTS, LABELS  # noqa: E402

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(parser)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--null-draws", type=int, default=32, help="random-basis draws (default 32)")
    parser.add_argument("--top-k", type=int, default=16, help="leading eigenvalues in the power-law fits")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        with output_folder(args.out, [args.checkpoint]) as folder:
            model, ids = load_inputs(args)
            loss, acts, grads = activation_grads(model.params, model.spec, ids, next_token_loss(ids),
                                                 attention=False, projections=True)
            inputs = {}
            for layer in range(model.spec.num_layers):
                normed, params = attention_inputs(model, acts.hidden, layer)
                for name in ("q", "k", "v"):
                    inputs[(layer, name)] = projection_inputs(acts, grads, normed, params["attn"], layer, name)
            table = projection_alignment_rows(inputs, jax.random.key(args.seed), k=args.top_k,
                                              num_draws=args.null_draws)
            write_table(table, folder, "alignment")
            os.makedirs(os.path.join(folder, "plots"))
            _plot(table, os.path.join(folder, "plots", "alignment_z.png"))
            with open(os.path.join(folder, "summary.json"), "w") as f:
                json.dump({"checkpoint": os.path.abspath(args.checkpoint), "loss": float(loss),
                           "tokens": int(ids.size)}, f, indent=1)
        if not args.quiet:
            print(markdown(f"H/G/Z alignments of the q/k/v projections (loss {float(loss):.4f})", table,
                           ["layer", "projection"] + [c for a in ALIGNMENTS for c in (a, f"{a}_null_mean", f"{a}_z")]))
            print(f"results in {os.path.abspath(args.out)}")
        return 0

    return run_main("activation_alignment", body)


def _plot(table, path: str) -> None:
    rows = [f"L{layer} {p}" for layer, p in zip(table["layer"], table["projection"])]
    fig, axes = subplots(1, 2, figsize=(11, 0.3 * len(rows) + 2))
    value = np.stack([table[a] for a in ALIGNMENTS], axis=1)
    z = np.stack([table[f"{a}_z"] for a in ALIGNMENTS], axis=1)
    for ax, grid, title, cmap, lim in ((axes[0], value, "alignment (Pearson of entries)", "viridis", (-1, 1)),
                                       (axes[1], z, "z against random eigenbases", "RdBu_r", None)):
        if lim is None:
            m = np.nanmax(np.abs(grid)) or 1.0
            lim = (-m, m)
        im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=lim[0], vmax=lim[1], interpolation="nearest")
        ax.set_xticks(range(len(ALIGNMENTS)), [LABELS[a] for a in ALIGNMENTS], rotation=30, fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
    save_figure(fig, path)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
