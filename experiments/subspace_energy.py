"""The subspace document's "phase 2": do activation differences live inside a head's QK subspace?

At one layer, activation differences between paired inputs are projected onto each head's top-k
query-side QK-kernel singular vectors (computed from the weights, never forming E x E). The energy
fraction ||D P||^2 / ||D||^2 is set beside its chance level k/E, the exact null std of a uniformly
random k-subspace, and a Monte Carlo over random subspaces.

Pairs: `--ids-a A.npy --ids-b B.npy` (same shape; e.g. the same problems in two languages), compared
at each sequence's last token. Without them, two kinds of pairs from random sequences: one token
changed in the middle (`one_token`), and unrelated sequences (`unrelated`).

    python experiments/subspace_energy.py --out DIR [CHECKPOINT] [--layer L] [--k 4,8]

Writes `energy.csv`, `summary.json` and `plots/energy.png`.
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
from experiments._activations import add_input_options, layer_params, load_inputs  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402


import spectrax as sx  # noqa: E402
from spectrax.analyses.activations import subspace_energy_rows  # noqa: E402
from spectrax.analyses.tables import format_percentile  # noqa: E402
from spectrax.models import capture  # noqa: E402
from spectrax.report.plots import save_figure, subplots  # noqa: E402
from spectrax.spectral import qk_kernel_svd  # noqa: E402

__all__ = ["main", "paired_deltas"]


def paired_deltas(model: sx.Model, pairs: dict[str, tuple[np.ndarray, np.ndarray]], layer: int) -> dict[str, np.ndarray]:
    """`{name: (N, E)}` differences of the residual stream entering `layer`, at the last token."""
    out = {}
    for name, (a, b) in pairs.items():
        ha = capture(model.params, model.spec, a, attention=False).hidden[layer, :, -1]
        hb = capture(model.params, model.spec, b, attention=False).hidden[layer, :, -1]
        out[name] = np.asarray(ha - hb, np.float32)
    return out


def _pairs(args, model, ids) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if args.ids_a or args.ids_b:
        if not (args.ids_a and args.ids_b):
            raise ValueError("give both --ids-a and --ids-b")
        a, b = np.load(args.ids_a).astype(np.int32), np.load(args.ids_b).astype(np.int32)
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(f"--ids-a {a.shape} and --ids-b {b.shape} must be (N, T) of one shape")
        return {"given": (a, b)}
    rng = np.random.default_rng(args.seed + 1)
    changed = ids.copy()
    mid = ids.shape[1] // 2
    changed[:, mid] = (ids[:, mid] + rng.integers(1, model.spec.vocab_size, len(ids))) % model.spec.vocab_size
    unrelated = rng.integers(0, model.spec.vocab_size, ids.shape).astype(np.int32)
    return {"one_token": (ids, changed), "unrelated": (ids, unrelated)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_options(parser)
    parser.add_argument("--out", required=True, help="new folder for the results (refused if it exists)")
    parser.add_argument("--ids-a", default=None, help="paired inputs A, .npy (N, T)")
    parser.add_argument("--ids-b", default=None, help="paired inputs B, .npy (N, T)")
    parser.add_argument("--layer", type=int, default=None, help="layer whose input stream and QK kernels are used "
                        "(default: the middle layer)")
    parser.add_argument("--k", default="4,8", help="subspace dimensions, comma-separated (default 4,8)")
    parser.add_argument("--null-draws", type=int, default=256, help="random subspaces per k (default 256)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        ks = [int(k) for k in args.k.split(",")]
        with output_folder(args.out, [args.checkpoint]) as folder:
            model, ids = load_inputs(args)
            L, E = model.spec.num_layers, model.spec.hidden_size
            layer = L // 2 if args.layer is None else args.layer
            if not 0 <= layer < L:
                raise ValueError(f"--layer must be in [0, {L})")
            if any(not 0 < k <= min(E, min(model.spec.head_dims)) for k in ks):
                raise ValueError(f"--k values must be in [1, head_dim = {min(model.spec.head_dims)}]")
            attn = layer_params(model, layer)["attn"]
            svd = qk_kernel_svd(np.asarray(attn["q"], np.float32), np.asarray(attn["k"], np.float32), top_k=max(ks))
            bases = {f"head{h}_k{k}": np.asarray(svd.query[h, :, :k]) for h in range(svd.query.shape[0]) for k in ks}
            deltas = paired_deltas(model, _pairs(args, model, ids), layer)
            table = subspace_energy_rows(deltas, bases, jax.random.key(args.seed), num_draws=args.null_draws)
            write_table(table, folder, "energy")
            os.makedirs(os.path.join(folder, "plots"))
            _plot(table, os.path.join(folder, "plots", "energy.png"), layer)
            with open(os.path.join(folder, "summary.json"), "w") as f:
                json.dump({"checkpoint": os.path.abspath(args.checkpoint), "layer": layer, "k": ks,
                           "pairs": {n: int(len(d)) for n, d in deltas.items()}}, f, indent=1)
        if not args.quiet:
            print(markdown(f"Energy of activation differences in QK subspaces, layer {layer}",
                           shown(table, args.null_draws), ["deltas", "basis", "energy", "chance", "null_std", "z", "pct"]))
            print(f"results in {os.path.abspath(args.out)}")
        return 0

    return run_main("subspace_energy", body)


def shown(table, num_draws: int) -> dict:
    """The energy table as printed: `pct` (the fraction of random subspaces with less energy) as a
    percentile that reads `< 1/N` or `> 1 - 1/N` beyond every one of the N draws (the CSV keeps the
    number)."""
    return {**table, "pct": [format_percentile(100 * p, num_draws) for p in table["pct"]]}


def _plot(table, path: str, layer: int) -> None:
    fig, ax = subplots(figsize=(7, 3.8))
    names = list(dict.fromkeys(table["deltas"]))
    bases = list(dict.fromkeys(table["basis"]))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        sel = table["deltas"] == name
        x = np.arange(len(bases)) + i * width
        ax.bar(x, table["energy"][sel], width, label=f"{name} deltas")
        ax.errorbar(x, table["chance"][sel], yerr=2 * table["null_std"][sel], fmt="k_", capsize=3,
                    label="chance k/E ± 2 null std" if i == 0 else None)
    ax.set_xticks(np.arange(len(bases)) + 0.4 - width / 2, bases, rotation=60, fontsize=7)
    ax.set(ylabel="energy fraction ||D P||² / ||D||²", title=f"Activation differences in QK subspaces (layer {layer})")
    ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
