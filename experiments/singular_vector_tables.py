"""The five-laws README's singular-vector tables (Fourth and Fifth Law) against the correct baseline.

Source: the five-laws README (`emis-framework/math-under-llm`). Fourth Law: mean |cos| of index-matched left singular
vectors (columns of U, dimension d_h) of W_Q,h, W_K,g, W_V,g, compared with a "random baseline"
1/sqrt(d_h); values below it are called "super-orthogonal":

    | Model                | d_h | Random Baseline | cos(U_Q,U_K) | cos(U_Q,U_V) | cos(U_K,U_V) |
    | Qwen2.5-14B-Instruct | 128 | 0.0884          | 0.0981       | 0.0704       | 0.0702       |

Fifth Law: the same on the right singular vectors (columns of V, dimension d_model), baseline
1/sqrt(d_model) (e.g. 5120: 0.0140; observed 0.0212, 0.0142, 0.0211), read as "random".

What spectrax corrects: 1/sqrt(d) is the RMS of <x, y> for independent uniform unit vectors, not
the mean of |<x, y>|. The exact expectation is E|cos| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)),
about sqrt(2 / (pi d)) = 0.80 / sqrt(d) (d = 128: 0.0706 against 0.0884). Singular vectors of
Gaussian matrices are uniform, so this is the exact null; values ~20% below 1/sqrt(d) are what
random matrices give. This script reports, per layer group and for the whole model, each mean
|cos| beside both baselines and says on which side of each it falls: "super-orthogonal" under the
source's baseline, and below / at / above chance under the exact one, with

    z = (mean over heads - E|cos|) / (mean per-head null std / sqrt(n_eff))

(`n_eff`: heads for the Q-K and Q-V pairs, whose values are independent under the null even when
query heads share a key head; distinct (layer, KV head) pairs for K-V, which repeats per query
head). |z| <= 2 is "at chance". The index-free Grassmann similarity of the right singular
subspaces (mean squared cosine of principal angles, chance k/d = d_h/d_model) is listed too.

    python experiments/singular_vector_tables.py CKPT --out DIR [--layers 0-11] [--groups 4]

Writes `singular_vectors.csv` (one row per group x side x pair) and `heads.csv`.
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
from spectrax.analyses.aggregate import finite_mean, layer_groups  # noqa: E402
from spectrax.analyses.laws import PAIRS  # noqa: E402
from spectrax.io.load import open_source  # noqa: E402

__all__ = ["SIDES", "main", "vector_table"]

# (statistic prefix, what it compares, whether the source gave a 1/sqrt(d) baseline)
SIDES = (("cos_u", "U (left, d = head_dim)", True), ("cos_v", "V (right, d = hidden)", True),
         ("grassmann", "V subspace (Grassmann)", False))
CHANCE_Z = 2.0


def _n_eff(heads: dict[str, np.ndarray], rows: np.ndarray, pair: str) -> int:
    """Independent values among the rows: K-V repeats per query head, Q-K and Q-V do not."""
    if pair == "kv":
        return len(set(zip(np.asarray(heads["layer"])[rows].tolist(), np.asarray(heads["kv_head"])[rows].tolist())))
    return int(rows.sum())


def _side_vs_exact(z: float) -> str:
    if not np.isfinite(z):
        return "n/a"
    return "below chance" if z < -CHANCE_Z else "above chance" if z > CHANCE_Z else "at chance"


def vector_table(heads: dict[str, np.ndarray], head_dim: int, hidden: int, num_groups: int = 4) -> dict[str, np.ndarray]:
    """One row per (layer group or "all") x side x pair, from a `laws` per-head table."""
    layer = np.asarray(heads["layer"]).astype(int)
    blocks = [("all", tuple(np.unique(layer)))] + [(f"{g[0]}-{g[-1]}", g) for g in layer_groups(np.unique(layer), num_groups)]
    rows: list[dict] = []
    for name, block in blocks:
        chosen = np.isin(layer, block)
        for prefix, side, has_source_baseline in SIDES:
            d = head_dim if prefix == "cos_u" else hidden
            for pair in PAIRS:
                stat = f"{prefix}_{pair}"
                observed = finite_mean(np.asarray(heads[stat], float)[chosen])
                exact = finite_mean(np.asarray(heads[f"{stat}_null_mean"], float)[chosen])
                n_eff = _n_eff(heads, chosen, pair)
                spread = finite_mean(np.asarray(heads[f"{stat}_null_std"], float)[chosen]) / np.sqrt(n_eff)
                z = (observed - exact) / spread if spread > 0 else np.nan
                source = 1.0 / np.sqrt(d) if has_source_baseline else np.nan
                rows.append({
                    "group": name, "side": side, "pair": pair.upper(), "d": d, "observed": observed,
                    "source_baseline": source, "exact_null": exact, "null_std_of_mean": spread, "n_eff": n_eff,
                    "z": z, "ratio_to_source": observed / source, "ratio_to_exact": observed / exact,
                    "source_reading": ("n/a" if not has_source_baseline else
                                       "super-orthogonal" if observed < source else "not below baseline"),
                    "exact_reading": _side_vs_exact(z),
                })
    text = ("group", "side", "pair", "source_reading", "exact_reading")
    return {c: np.array([r[c] for r in rows], dtype=object if c in text else None) for c in rows[0]}


def _source_layout(table: dict[str, np.ndarray], label: str) -> str:
    """The source's own layout (model-level means) with the exact expectation added."""
    out = []
    for prefix, side, title in (("cos_u", "U (left, d = head_dim)", "Fourth Law, left singular vectors U"),
                                ("cos_v", "V (right, d = hidden)", "Fifth Law, right singular vectors V")):
        pick = (table["group"] == "all") & (table["side"] == side)
        values = {p: table["observed"][pick & (table["pair"] == p.upper())][0] for p in PAIRS}
        z = {p: table["z"][pick & (table["pair"] == p.upper())][0] for p in PAIRS}
        d = int(table["d"][pick][0])
        shown = {
            "Model": [label], "d": [str(d)],
            "source baseline 1/√d": [fmt(1 / np.sqrt(d))],
            "exact E abs(cos)": [fmt(table["exact_null"][pick][0])],
            **{f"cos {prefix[-1].upper()}_{p[0].upper()},{prefix[-1].upper()}_{p[1].upper()} (z)":
               [f"{fmt(values[p])} ({fmt(z[p], 3)})"] for p in PAIRS},
        }
        out.append(markdown(f"{title}: source layout with the exact expectation", shown))
    return "\n".join(out)


def _render(table: dict[str, np.ndarray], label: str) -> str:
    shown = {
        "group": table["group"], "side": table["side"], "pair": table["pair"], "d": [str(int(d)) for d in table["d"]],
        "mean over heads": [fmt(x) for x in table["observed"]],
        "1/√d (source)": [fmt(x) for x in table["source_baseline"]],
        "reading under 1/√d": table["source_reading"],
        "exact null": [fmt(x) for x in table["exact_null"]],
        "z": [fmt(x, 3) for x in table["z"]],
        "reading under exact null": table["exact_reading"],
    }
    note = ("Exact null: E abs(cos) = Γ(d/2)/(√π Γ((d+1)/2)) for cos; k/d for Grassmann (k = head_dim, d = hidden). "
            "z = (mean - null) / (per-head null std / √n_eff); abs(z) ≤ 2 is 'at chance'. 'super-orthogonal' is the "
            "source's word for a mean below 1/√d, which random matrices already satisfy.")
    return _source_layout(table, label) + "\n" + markdown(f"{label}: singular-vector alignments per layer group", shown,
                                                          note=note)


def run(checkpoint: str, out: str, *, num_draws: int = 16, seed: int = 0, layers: Sequence[int] | None = None,
        num_groups: int = 4, progress: bool = True) -> dict[str, np.ndarray]:
    """Analyze `checkpoint` (`laws`) and write the singular-vector table into the new folder `out`."""
    if num_groups < 1:
        raise ValueError(f"--groups must be >= 1, got {num_groups}")
    (label,) = checkpoint_labels([checkpoint])
    with output_folder(out, [checkpoint]) as folder:
        source = open_source(checkpoint)
        if len(set(source.spec.head_dims)) != 1:
            raise ValueError(f"layers of {checkpoint} differ in head_dim {sorted(set(source.spec.head_dims))}; "
                             "analyze one head_dim at a time with --layers")
        tables = collect(source, analyses=["laws"], layers=layers,
                         options=Options(num_draws=num_draws, seed=seed), progress=progress)
        table = vector_table(tables.heads, source.spec.head_dims[0], source.spec.hidden_size, num_groups)
        write_table(tables.heads, folder, "heads")
        write_table(table, folder, "singular_vectors")
    print(_render(table, label))
    print(f"results in {os.path.abspath(out)}")
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint folder")
    parser.add_argument("--groups", type=int, default=4, help="equal blocks of consecutive layers (default 4)")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(args.checkpoint, args.out, num_draws=args.null_draws, seed=args.seed, layers=parse_layers(args.layers),
            num_groups=args.groups, progress=not args.quiet)
        return 0

    return run_main("singular_vector_tables", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
