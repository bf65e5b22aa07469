"""experiments/modular_addition.py runs end to end at a small size, writes its tables, figures and
metrics, reports the theory's quantities, resumes from its orbax checkpoint, and refuses bad input.

No `__init__.py` in this folder on purpose: the script is imported from the repository's own
`experiments/` folder.
"""

import json
import os

import numpy as np
import pytest
from tests.conftest import experiment, csv_rows as read_csv


def script():
    return experiment("modular_addition")


SMALL = ["--d", "23", "--seeds", "1", "--epochs", "200", "--hidden", "256", "--wd-sweep", "0,5e-5", "--quiet"]


@pytest.mark.slow
def test_small_run_writes_everything_and_resumes(tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    assert script().main(["--out", str(out), "--checkpoint", str(ckpt), *SMALL]) == 0
    expected = {"metrics.json", "seeds.csv", "trajectory.csv", "orders.csv", "order_histogram.csv", "wd_sweep.csv",
                "wd_order_histograms.csv", "accuracy.png", "r_sum.png", "order_histogram.png", "fourier_A.png",
                "wd_orders.png"}
    assert expected <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["setting"]["runs"] == 2 and metrics["setting"]["train_pairs"] == 476
    checks = metrics["checks"]
    # d = 23 generalizes within 200 epochs; the solution is a Fourier one, shrunk by weight decay
    assert checks["all_test_acc_100"] and checks["d_minus_1"] == 22
    assert 20.0 < checks["r_sum_min"] <= checks["r_sum_max"] < 22.0
    assert checks["max_abs_r_sum_minus_decay_prediction"] < 0.3
    seeds = read_csv(out / "seeds.csv")
    assert len(seeds) == 1 and float(seeds[0]["final_test_acc"]) == 1.0 and int(seeds[0]["epoch_test_100"]) < 200
    orders = read_csv(out / "orders.csv")
    assert [int(r["frequency"]) for r in orders] == list(range(1, 12))
    hist = read_csv(out / "order_histogram.csv")
    assert sum(int(r["count"]) for r in hist) == 11
    assert sum(int(r["count"]) * int(r["order"]) for r in hist) == sum(int(r["order"]) for r in orders)
    sweep = read_csv(out / "wd_sweep.csv")
    assert [float(r["wd"]) for r in sweep] == [0.0, 5e-5]
    # without decay nothing prunes the hidden units: far more of them stay active than with it
    assert float(sweep[0]["mean_active_units"]) > 2 * float(sweep[1]["mean_active_units"])
    traj = read_csv(out / "trajectory.csv")
    assert len(traj) == 21 and int(traj[-1]["epoch"]) == 199
    assert (out / "fourier_A.png").stat().st_size > 10_000

    # the checkpoint holds the finished run: a second call resumes it and reports the same numbers
    again = tmp_path / "again"
    assert script().main(["--out", str(again), "--checkpoint", str(ckpt), *SMALL]) == 0
    assert json.loads((again / "metrics.json").read_text())["per_seed"] == metrics["per_seed"]
    # the same checkpoint with other settings is refused
    other = [*SMALL[:-2], "0,1e-4", "--quiet"]
    assert script().main(["--out", str(tmp_path / "other"), "--checkpoint", str(ckpt), *other]) == 2
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("bad", [["--d", "24"], ["--wd-sweep", "0,x"], ["--wd-sweep=-1e-5"], ["--seeds", "0"]])
def test_user_errors_exit_2(tmp_path, bad):
    assert script().main(["--out", str(tmp_path / "x"), "--epochs", "2", "--hidden", "8", "--quiet", *bad]) == 2
    assert not (tmp_path / "x").exists()


def test_existing_out_is_refused(tmp_path):
    assert script().main(["--out", str(tmp_path), "--epochs", "2", "--quiet"]) == 2


def test_help_describes_the_experiment(capsys):
    with pytest.raises(SystemExit) as exit_info:
        script().main(["--help"])
    assert exit_info.value.code == 0 and "--wd-sweep" in capsys.readouterr().out


def test_parse_floats():
    assert script().parse_floats("0,1e-5,5e-5") == [0.0, 1e-5, 5e-5]
    assert np.isclose(script().parse_floats("2e-4")[0], 2e-4)
