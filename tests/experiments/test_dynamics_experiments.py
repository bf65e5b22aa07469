"""The dynamics experiment scripts run end to end at small sizes, write their metrics, tables and
figures, report what the theory predicts, and refuse an existing --out.

No `__init__.py` in this folder on purpose (see test_experiments.py): the scripts are imported
from the repository's own `experiments/` folder.
"""

import json
import os

import numpy as np
import pytest
from tests.conftest import experiment as script, csv_rows as read_csv


@pytest.mark.slow
def test_fig4_writes_metrics_and_plots(tmp_path):
    out = tmp_path / "fig4"
    assert script("scan_snap_fig4").main(["--out", str(out), "--steps", "40", "--quiet"]) == 0
    assert {"metrics.json", "trajectory.csv", "loss.png", "logits.png", "attention.png"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    checks = metrics["checks"]
    assert abs(checks["initial_loss_minus_ln_M"]) < 1e-5 and metrics["setting"]["M"] == 34
    assert checks["max_final_common_logit"] < 0 and checks["min_rank_correlation"] > 0.9
    assert len(metrics["loss"]) == 40 and len(metrics["final"]) == 2
    assert len(read_csv(out / "trajectory.csv")) == 40
    # an existing folder is refused with exit status 2, before any work
    assert script("scan_snap_fig4").main(["--out", str(out), "--quiet"]) == 2


@pytest.mark.slow
def test_fig6_grid_table(tmp_path):
    out = tmp_path / "fig6"
    assert script("scan_snap_fig6").main(["--out", str(out), "--quick", "--seeds", "2", "--steps", "25",
                                          "--checkpoint", str(tmp_path / "ckpt"), "--quiet"]) == 0
    assert (tmp_path / "ckpt" / "spectrax_loop.json").exists()  # the grid was checkpointed
    rows = read_csv(out / "table.csv")
    assert len(rows) == 12 and {"num_last", "lr_z", "ratio", "entropy_mean", "entropy_std"} <= set(rows[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["runs"] == 24 and np.array(metrics["entropy_per_seed"]).shape == (12, 2)
    # larger lr_Z, lower final entropy: strongly negative rank correlation over the grid
    assert metrics["checks"]["spearman_lr_z_vs_entropy"] < -0.4
    assert (out / "entropy.png").stat().st_size > 10_000
    assert script("scan_snap_fig6").main(["--out", str(tmp_path / "x"), "--seeds", "1"]) == 2


@pytest.mark.slow
def test_snap_growth_slows(tmp_path):
    out = tmp_path / "snap"
    assert script("scan_snap_snap").main(["--out", str(out), "--steps", "2000", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["setting"]["momentum"] == 0.0
    slopes = metrics["slopes"]
    assert slopes["early_slope_per_ln_t"] > 0 and slopes["late_over_early"] < 0.9
    inc = [d["increase"] for d in metrics["decade_increments"]]
    assert len(inc) == 2 and inc[1] < inc[0]
    assert metrics["final_common_logit"] < 0 < metrics["final_top_logit"]
    assert (out / "snap.png").exists() and (out / "trajectory.csv").exists()


@pytest.mark.slow
def test_joma_invariants(tmp_path):
    out = tmp_path / "joma"
    assert script("joma_invariants").main(["--out", str(out), "--seeds", "1", "--steps", "1000", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["runs"]) == 6  # 3 attention kinds x 2 kinds of X
    checks = metrics["min_nc_after_100"]
    assert checks["softmax/gaussian"]["min"] > 0.95
    assert checks["linear/gaussian"]["min"] > 0.999
    # the softmax gap is not the step (the step term changes nothing) but the drifting b̄
    assert abs(checks["softmax/gaussian"]["min_with_step_term"] - checks["softmax/gaussian"]["min"]) < 1e-3
    assert checks["softmax/gaussian"]["max_attn_mean_drift"] > 1
    # exp attention goes unstable by t = 1000 on Gaussian X; with the step term NC is 1 all the same
    assert checks["exp/gaussian"]["seeds_unstable"] == 1 and checks["exp/gaussian"]["min_with_step_term"] > 0.9999
    assert len(read_csv(out / "nc.csv")) == 1000 and len(read_csv(out / "summary.csv")) == 6
    assert {"nc.png", "logits.png", "components.png"} <= set(os.listdir(out))
    assert script("joma_invariants").main(["--out", str(tmp_path / "y"), "--steps", "50", "--quiet"]) == 2


@pytest.mark.slow
def test_joma_entropy(tmp_path):
    out = tmp_path / "entropy"
    assert script("joma_entropy").main(["--out", str(out), "--steps", "3000", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interior_minimum"] and metrics["entropy_min"] < metrics["entropy_initial"] - 0.5
    assert metrics["entropy_final"] > metrics["entropy_min"] + 0.05
    assert (out / "entropy.png").exists() and len(read_csv(out / "trajectory.csv")) == 300


@pytest.mark.parametrize("name", ["scan_snap_fig4", "scan_snap_fig6", "scan_snap_snap", "joma_invariants",
                                  "joma_entropy"])
def test_help_describes_the_experiment(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script(name).main(["--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out
