"""The symmetry experiment scripts run end to end at small sizes, write metrics, tables and figures,
report what the theory predicts, resume from --checkpoint, and refuse an existing --out."""

import json
import os

import numpy as np
import pytest
from tests.conftest import experiment as script, csv_rows as read_csv


@pytest.mark.slow
def test_noether_charge(tmp_path):
    out = tmp_path / "noether"
    args = ["--steps", "3000", "--factor-steps", "400", "--drift-steps", "8000", "--quiet"]
    assert script("noether_charge").main(["--out", str(out), *args]) == 0
    assert {"metrics.json", "scalar_charge.csv", "factorization_charge.csv", "gd_drift.csv", "charges.png",
            "gd_drift.png"} <= set(os.listdir(out))
    m = json.loads((out / "metrics.json").read_text())
    assert m["recursion_error_max"] < 1e-12
    s = m["scalar"]
    assert s["gd_max_relative_drift"] < 0.01  # GD keeps the charge
    assert s["sgd_max_abs_final"] < 0.02 * np.max(np.abs(s["initial_charge"]))  # SGD: to C* = 0
    g = m["gd_drift"]
    assert np.allclose(g["slope_after_5_steps"], 2.0, atol=0.1) and np.allclose(g["slope_to_convergence"], 1.0, atol=0.1)
    f = m["factorization"]
    assert f["sgd_spread_across_inits"] < 0.5 * f["gd_spread_across_inits"] and f["gd_max_relative_drift"] < 0.05
    assert len(read_csv(out / "scalar_charge.csv")) == 300 and len(read_csv(out / "gd_drift.csv")) == 16
    assert script("noether_charge").main(["--out", str(out), "--quiet"]) == 2


@pytest.mark.slow
def test_deep_linear_balance_and_checkpoint_resume(tmp_path):
    args = ["--steps", "1000", "--dim", "3", "--layers", "3", "--lr", "0.005", "--quiet"]
    ckpt = tmp_path / "ckpt"
    out = tmp_path / "dlb"
    assert script("deep_linear_balance").main(["--out", str(out), "--checkpoint", str(ckpt), *args]) == 0
    assert {"metrics.json", "layer_norms.csv", "layer_norms.png", "alignment.png"} <= set(os.listdir(out))
    m = json.loads((out / "metrics.json").read_text())
    iso, aniso = m["settings"]["isotropic"], m["settings"]["anisotropic"]
    assert np.allclose(iso["predicted_layer_norms"], iso["predicted_c"], rtol=1e-12)
    assert aniso["predicted_layer_norms"][0] > 1.1 * aniso["predicted_c"]  # anisotropic input: W_1 off balance
    assert np.allclose(aniso["predicted_layer_norms"][1:], aniso["predicted_c"], rtol=1e-12)
    for s in (iso, aniso):
        assert s["recursion_error_max"] < 1e-12 and np.array(s["sgd_late_layer_norms"]).shape == (3, 3)
        assert s["sgd_late_misalignment_mean"] < s["sgd_initial_misalignment_mean"]
    assert len(read_csv(out / "layer_norms.csv")) == 10
    # a second run on the same checkpoint resumes the saved runs and gives the same numbers
    again = tmp_path / "dlb2"
    assert script("deep_linear_balance").main(["--out", str(again), "--checkpoint", str(ckpt), *args]) == 0
    m2 = json.loads((again / "metrics.json").read_text())
    assert m2["settings"]["isotropic"]["sgd_late_layer_norms"] == iso["sgd_late_layer_norms"]
    # other settings on the same checkpoint folder, or an existing --out, are refused (exit 2)
    assert script("deep_linear_balance").main(["--out", str(tmp_path / "x"), "--checkpoint", str(ckpt),
                                               "--steps", "2000", "--dim", "3", "--layers", "3", "--quiet"]) == 2
    assert script("deep_linear_balance").main(["--out", str(out), "--quiet"]) == 2


@pytest.mark.parametrize("name", ["noether_charge", "deep_linear_balance"])
def test_help_describes_the_experiment(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script(name).main(["--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out
