"""The five-laws README's base-vs-RL layer-group SSR table (Second Law), with the null spread.

Source: the five-laws README (`emis-framework/math-under-llm`), "Empirical Evidence (Qwen2.5 vs DeepSeek-R1)":

    | Layer Group | Qwen2.5 SSR | DeepSeek-R1 SSR | Improvement |
    | 0-11        | 0.006852    | 0.006818        | +0.48%      |
    | 36-47       | 0.006743    | 0.006479        | +3.92%      |

SSR = Q/K spectral shape residual per (layer, query head); group value = mean over the group's
layers of the per-layer mean over heads; Improvement = (base - tuned) / base; four equal blocks of
consecutive layers. The source reads the growing deep-layer improvement as "RL makes models smart".

What spectrax adds: a yardstick for the size of the change. `spectrax compare` analyzes both
checkpoints with the same random keys; for each head it stores the SSR null std of either
checkpoint (independent Gaussian W_Q,h, W_K,g of that head's shapes and RMS scale). This script
reads its tables and asks, per group, whether the mean change is larger than chance fluctuations
of SSR at these shapes:

    diff   = mean over the group's heads of (SSR_tuned - SSR_base)
    sigma  = sqrt(mean_i (std_base,i^2 + std_tuned,i^2)) / sqrt(n_eff)
    z      = diff / sigma;   "beyond null" iff |z| > 2

`n_eff` is the number of distinct (layer, KV head) pairs in the group, not the number of query
heads: query heads that share a key head share W_K, so their SSRs are correlated, and counting
each KV group once is the conservative choice (it can only widen the band). Under the null that
both checkpoints hold independent random matrices the group difference would lie inside +-2 sigma
about 95% of the time. Being beyond the band says the change is larger than SSR's own sampling
noise at these shapes; it does not say the change is related to reasoning, and inside the band a
consistent sign across heads ("heads lower in tuned") is still only descriptive: heads are not
independent samples and fine-tuned weights are not independent of their base.

A second, complementary yardstick, `paired_z`: the mean change over its spread across heads (the
change averaged within each (layer, KV head) unit, std over units / sqrt(n_eff)). It asks whether
the shift is consistent across heads, whatever its size; a fine-tuned model can move every head
by a tiny, consistent amount. Neither z says anything about reasoning.

    python experiments/base_vs_tuned_ssr.py BASE TUNED --out DIR [--null-draws 16] [--groups 4]

Writes `ssr_groups.csv` and the full `compare/` folder (heads_diff.csv, layers_diff.csv,
groups_diff.csv, a/, b/, report.md, plots/).
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
    read_csv,
    run_main,
    write_table,
)
from spectrax.run import compare  # noqa: E402
from spectrax.analyses.aggregate import (  # noqa: E402
    group_means,
    layer_groups,
    layer_means,
    relative_change,
)

__all__ = ["STATISTIC", "group_table", "main"]

STATISTIC = "ssr_qk"
BAND = 2.0  # |z| beyond this is "beyond null": about 5% of groups under the null


def group_table(heads_a: dict[str, np.ndarray], heads_b: dict[str, np.ndarray],
                heads_diff: dict[str, np.ndarray], num_groups: int = 4, stat: str = STATISTIC) -> dict[str, np.ndarray]:
    """Per layer group: base and tuned means, the source's improvement, and the change against
    the null spread (module docstring). Inputs are `compare`'s `a/heads.csv`, `b/heads.csv` and
    `heads_diff.csv` as column dicts."""
    groups = layer_groups(np.unique(heads_a["layer"]).astype(int), num_groups)
    base = group_means(layer_means(heads_a, [stat]), [stat], groups)
    tuned = group_means(layer_means(heads_b, [stat]), [stat], groups)
    layer = np.asarray(heads_a["layer"]).astype(int)
    kv = np.asarray(heads_a["kv_head"]).astype(int)
    spread = np.hypot(heads_a[f"{stat}_null_std"], heads_b[f"{stat}_null_std"])  # per head
    diff_z = np.asarray(heads_diff[f"{stat}_diff_z"], float)
    per_head_diff = np.asarray(heads_diff[f"{stat}_diff"], float)
    columns: dict[str, list] = {k: [] for k in ("n_heads", "n_eff", "diff", "sigma", "z", "beyond_null",
                                                "paired_z", "share_heads_abs_z_gt_2", "share_heads_lower_in_tuned")}
    for i, group in enumerate(groups):
        rows = np.isin(layer, group)
        units = sorted(set(zip(layer[rows], kv[rows])))
        n_eff = len(units)
        diff = float(tuned[stat][i] - base[stat][i])
        sigma = float(np.sqrt(np.nanmean(spread[rows] ** 2)) / np.sqrt(n_eff))
        # Across-heads spread: the change averaged within each (layer, KV head), then its spread
        # over those units, as in a paired comparison.
        unit_diffs = np.array([np.nanmean(per_head_diff[rows & (layer == l) & (kv == g)]) for l, g in units])
        paired = float(np.std(unit_diffs, ddof=1) / np.sqrt(n_eff)) if n_eff > 1 else np.nan
        columns["n_heads"].append(int(rows.sum()))
        columns["n_eff"].append(n_eff)
        columns["diff"].append(diff)
        columns["sigma"].append(sigma)
        columns["z"].append(_ratio(diff, sigma))
        columns["paired_z"].append(_ratio(diff, paired))
        columns["beyond_null"].append(int(abs(columns["z"][-1]) > BAND))
        columns["share_heads_abs_z_gt_2"].append(float(np.mean(np.abs(np.nan_to_num(diff_z[rows])) > 2)))
        columns["share_heads_lower_in_tuned"].append(float(np.mean(per_head_diff[rows] < 0)))
    return {
        "group": base["group"],
        "base": base[stat],
        "tuned": tuned[stat],
        "improvement": relative_change(base[stat], tuned[stat]),
        **{k: np.asarray(v) for k, v in columns.items()},
        "null_mean_base": base[f"{stat}_null_mean"],
    }


def _ratio(diff: float, spread: float) -> float:
    """diff / spread; 0 for no change at all, NaN for a change with no spread to measure it by."""
    if np.isfinite(spread) and spread > 0:
        return diff / spread
    return 0.0 if diff == 0 else np.nan


def _render(table: dict[str, np.ndarray], labels: tuple[str, str], num_draws: int) -> str:
    n = len(table["group"])
    shown = {
        "Layer Group": list(table["group"]),
        f"{labels[0]} SSR": [fmt(x) for x in table["base"]],
        f"{labels[1]} SSR": [fmt(x) for x in table["tuned"]],
        "Improvement": [f"{100 * x:+.2f}%" if np.isfinite(x) else "n/a" for x in table["improvement"]],
        "tuned − base": [fmt(x, 3) for x in table["diff"]],
        "±2σ null band": [fmt(2 * x, 3) for x in table["sigma"]],
        "z": [fmt(x, 3) for x in table["z"]],
        "verdict": ["beyond null" if b else "within null spread" for b in table["beyond_null"]],
        "z across heads": [fmt(x, 3) for x in table["paired_z"]],
        "heads abs(z)>2": [f"{100 * x:.0f}%" for x in table["share_heads_abs_z_gt_2"]],
        "heads lower in tuned": [f"{100 * x:.0f}%" for x in table["share_heads_lower_in_tuned"]],
        "SSR null mean": [fmt(x) for x in table["null_mean_base"]],
    }
    assert all(len(v) == n for v in shown.values())
    note = ("σ = sqrt(mean over heads of std_base² + std_tuned²) / sqrt(n_eff), std = the per-head SSR null std "
            f"({num_draws} Gaussian draws), n_eff = distinct (layer, KV head) pairs in the group (query heads sharing "
            "a key head are not independent). 'beyond null': |tuned − base| > 2σ, a change larger than SSR's own "
            "fluctuation between independent random matrices of these shapes, averaged over the group. "
            "'z across heads': the change over its spread across (layer, KV head) units / sqrt(n_eff), a paired "
            "comparison: large when the change is consistent across heads, whatever its size. "
            "'heads abs(z)>2': share of heads whose own change exceeds 2 per-head null spreads (about 5% expected "
            "by chance). 'heads lower in tuned' is descriptive only.")
    return markdown(f"Layer-group Q/K SSR: {labels[0]} (base) vs {labels[1]} (tuned)", shown, note=note)


def run(base: str, tuned: str, out: str, *, num_draws: int = 16, seed: int = 0, layers: Sequence[int] | None = None,
        num_groups: int = 4, progress: bool = True) -> dict[str, np.ndarray]:
    """Compare `base` and `tuned` (`laws` only) and write the group table into the new folder `out`."""
    if num_groups < 1:
        raise ValueError(f"--groups must be >= 1, got {num_groups}")
    labels = tuple(checkpoint_labels([base, tuned]))
    with output_folder(out, [base, tuned]) as folder:
        written = compare(base, tuned, os.path.join(folder, "compare"), analyses=("laws",), num_draws=num_draws,
                          seed=seed, layers=layers, progress=progress)
        table = group_table(read_csv(os.path.join(written, "a", "heads.csv")),
                            read_csv(os.path.join(written, "b", "heads.csv")),
                            read_csv(os.path.join(written, "heads_diff.csv")), num_groups)
        write_table(table, folder, "ssr_groups")
    print(_render(table, labels, num_draws))
    print(f"results in {os.path.abspath(out)}")
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="base checkpoint (e.g. Qwen2.5-14B)")
    parser.add_argument("tuned", help="tuned checkpoint of the same architecture (e.g. DeepSeek-R1-Distill-Qwen-14B)")
    parser.add_argument("--groups", type=int, default=4, help="equal blocks of consecutive layers (default 4)")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        run(args.base, args.tuned, args.out, num_draws=args.null_draws, seed=args.seed,
            layers=parse_layers(args.layers), num_groups=args.groups, progress=not args.quiet)
        return 0

    return run_main("base_vs_tuned_ssr", body)


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    sys.exit(main())
