"""experiments/stability_warmup.py and experiments/symmetry_collapse.py run end to end at small
sizes, write their tables, metrics and figures, hold the theory, and refuse an existing --out.

No `__init__.py` in this folder on purpose: the scripts are imported from `experiments/`.
"""

import json
import os

import pytest
from tests.conftest import experiment as script, csv_rows as read_csv


@pytest.mark.slow
def test_stability_warmup_small(tmp_path):
    out, ckpt = tmp_path / "stab", tmp_path / "ckpt"
    argv = ["--out", str(out), "--checkpoint", str(ckpt), "--d", "6", "--steps", "800", "--seeds", "2",
            "--etas", "0.02,0.6", "--warmup-steps", "200", "--showcase-eta", "0.6", "--quiet"]
    assert script("stability_warmup").main(argv) == 0
    assert {"metrics.json", "sweep.csv", "runs.csv", "seeds.csv", "showcase.csv", "trajectories.png", "sweep.png",
            "sharpness_paths.png", "seeds.png"} <= set(os.listdir(out))
    assert (ckpt / "spectrax_loop.json").exists()  # the sweep was checkpointed
    metrics = json.loads((out / "metrics.json").read_text())
    sweep = read_csv(out / "sweep.csv")
    assert len(sweep) == 2 * 2 * 2  # inits x schedules x etas
    row = {(r["init_scale"], r["schedule"], r["eta"]): r for r in sweep}
    # large init at η = 0.6: every constant run diverges, every warmed-up one converges
    assert row[("1.0", "constant", "0.6")]["diverged"] == "2"
    assert row[("1.0", "warmup", "0.6")]["converged"] == "2"
    # small init: sharpness starts at s = 1; η = 0.6 < 1/s converges either way
    assert abs(float(row[("0.01", "constant", "0.6")]["sharpness_initial_median"]) - 1) < 1e-2
    assert row[("0.01", "constant", "0.6")]["converged"] == "2"
    show = metrics["showcase"]
    assert show["eta"] == 0.6 and show["outcome"] == ["diverged", "converged"]
    assert show["sharpness_final_warmup"] * 0.6 <= 2 < show["sharpness_initial"] * 0.6
    assert abs(show["sharpness_final_warmup"] / show["minimum_sharpness_final_warmup"] - 1) < 1e-8
    assert metrics["final_sharpness_power_vs_exact_max_rel"] < 1e-8
    runs = read_csv(out / "runs.csv")
    for r in runs:  # converged runs sit on a minimum stable at their η
        if r["outcome"] == "converged":
            assert float(r["sharpness_final"]) * float(r["eta"]) <= 2 * (1 + 1e-3)
    assert script("stability_warmup").main(["--out", str(out), "--quiet"]) == 2  # existing --out
    assert script("stability_warmup").main(["--out", str(tmp_path / "x"), "--etas", "0.1,-1", "--quiet"]) == 2


@pytest.mark.slow
def test_symmetry_collapse_small(tmp_path):
    out = tmp_path / "collapse"
    argv = ["--out", str(out), "--checkpoint", str(tmp_path / "ckpt"), "--steps", "6000", "--gammas", "13",
            "--seeds", "2", "--quiet"]
    assert script("symmetry_collapse").main(argv) == 0
    assert {"metrics.json", "sweep.csv", "summary.csv", "phase.png"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("product", "square"):
        r = metrics["models"][name]
        assert r["threshold_abs_error"] < 1e-4 and abs(r["slope_measured"] - r["slope_theory"]) < 1e-4
        assert r["max_abs_error_far_from_threshold"] < 1e-4
    a = metrics["moments"]["E_xy"]
    assert abs(metrics["models"]["product"]["threshold_theory"] - abs(a)) < 1e-12
    assert abs(metrics["models"]["square"]["threshold_theory"] - 2 * a) < 1e-12
    assert metrics["models"]["product"]["max_balance_gap_gamma_positive"] < 1e-6
    assert metrics["models"]["product"]["gamma0_balance_gap_min"] > 1e-3  # γ = 0: not balanced
    rows = read_csv(out / "sweep.csv")
    assert len(rows) == 2 * 13 * 2
    for r in rows:
        if abs(float(r["gamma"]) - (abs(a) if r["model"] == "product" else 2 * a)) >= 0.05:
            assert abs(float(r["order"]) - float(r["theory"])) < 1e-4
    assert script("symmetry_collapse").main(["--out", str(out), "--quiet"]) == 2
    assert script("symmetry_collapse").main(["--out", str(tmp_path / "y"), "--steps", "150", "--quiet"]) == 2


@pytest.mark.parametrize("name", ["stability_warmup", "symmetry_collapse"])
def test_help_describes_the_experiment(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script(name).main(["--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out
