"""experiments/spectral_navigator.py end to end at a small size: tables, figures and metrics are
written and consistent, the navigator beats the random walk, the baseline agrees with its exact
probability, a checkpointed run resumes to the same numbers, and user errors exit with status 2.

No `__init__.py` in this folder on purpose: the script is imported from the repository's own
`experiments/` folder.
"""

import json
import os

import numpy as np
import pytest
from tests.conftest import experiment, csv_rows as read_csv


def script():
    return experiment("spectral_navigator")


@pytest.mark.slow
def test_spectral_navigator_end_to_end(tmp_path):
    out, ckpt = tmp_path / "nav", tmp_path / "ckpt"
    args = ["--graphs", "30", "--min-nodes", "4", "--max-nodes", "8", "--batch", "8", "--chunk", "2", "--quiet"]
    assert script().main(["--out", str(out), "--checkpoint", str(ckpt), *args]) == 0
    assert {"by_distance.csv", "by_nodes.csv", "variants.csv", "metrics.json", "optimal_fraction.png",
            "variants.png"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["measured"]
    # every ordered pair of every graph is a query: 6 graphs of each n = 4..8
    assert m["n_queries"] == 6 * sum(n * (n - 1) for n in range(4, 9))
    assert metrics["setting"]["graphs_per_n"] == {str(n): 6 for n in range(4, 9)}
    assert m["navigator_optimal_fraction"] > 0.95 and m["navigator_failures"] == 0
    assert m["baseline_optimal_fraction"] < 0.5 and m["ci95"][0] > m["baseline_ci95"][1]
    assert abs(m["baseline_mc_vs_exact_z"]) < 4
    assert metrics["source_claim"]["fraction"] == 0.99
    rows = read_csv(out / "by_distance.csv")
    assert sum(int(r["n_queries"]) for r in rows) == m["n_queries"]
    assert all(float(r["nav_lo"]) <= float(r["nav_frac"]) <= float(r["nav_hi"]) for r in rows)
    assert rows[0]["distance"] == "1" and float(rows[0]["nav_frac"]) == 1.0
    by_n = read_csv(out / "by_nodes.csv")
    assert [int(r["num_nodes"]) for r in by_n] == list(range(4, 9))
    variants = read_csv(out / "variants.csv")
    assert len(variants) == len(metrics["variants"]) == 8 and variants[0]["variant"] == "commute/all"
    # the literal 'all eigenvectors, unscaled' reading is far worse than the weighted embedding
    assert metrics["variants"]["none/all"]["nav_frac"] < m["navigator_optimal_fraction"] - 0.05
    assert (out / "optimal_fraction.png").stat().st_size > 20_000

    # resuming from the finished checkpoint reproduces the numbers; other settings are refused
    again = tmp_path / "again"
    assert script().main(["--out", str(again), "--checkpoint", str(ckpt), *args]) == 0
    assert json.loads((again / "metrics.json").read_text())["by_distance"] == metrics["by_distance"]
    assert script().main(["--out", str(tmp_path / "other"), "--checkpoint", str(ckpt), "--seed", "1", *args]) == 2

    # an existing --out and a bad setting are user errors
    assert script().main(["--out", str(out), *args]) == 2
    assert script().main(["--out", str(tmp_path / "bad"), "--p", "0", *args]) == 2
    assert not (tmp_path / "bad").exists()
    assert np.isfinite(m["navigator_optimal_fraction_untied"])
