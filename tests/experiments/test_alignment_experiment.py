"""experiments/representation_alignment.py end to end at a small size: files, tables, the null
columns, the theory's checks, checkpoint/resume, and refused arguments (exit status 2)."""

import json
import os

import numpy as np
import pytest
from tests.conftest import experiment, csv_rows as rows


SMALL = ["--steps", "1200", "--record-every", "300", "--weight-decays", "0,0.02", "--seeds", "2", "--width", "8",
         "--depth", "1", "--d-in", "8", "--d-out", "8", "--teacher-width", "2", "--eval-size", "256",
         "--null-draws", "4", "--null-every", "2", "--top-k", "4", "--chunk", "2", "--quiet"]


def script():
    return experiment("representation_alignment")


@pytest.mark.slow
def test_alignment_experiment_end_to_end(tmp_path):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    assert script().main(["--out", str(out), "--checkpoint", str(ckpt), *SMALL]) == 0
    assert {"metrics.json", "trajectory.csv", "final.csv", "spectra.csv", "alignments.png", "spectra.png",
            "layers.png"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["setting"]["dims"] == [8, 8, 8] and metrics["setting"]["headline_layer"] == 0
    traj = rows(out / "trajectory.csv")
    assert len(traj) == 5 * 4 * 2  # (init + 4 records) x (2 γ x 2 seeds) x 2 layers
    with_null = [r for r in traj if r["hz_b_null_std"] != ""]
    assert {int(r["record"]) for r in with_null} == {0, 2, 4}
    for r in with_null:  # z is (observed - null mean) / null std
        z = (float(r["hz_b"]) - float(r["hz_b_null_mean"])) / float(r["hz_b_null_std"])
        assert abs(z - float(r["hz_b_z"])) < 1e-3 * max(1, abs(z))
    final = rows(out / "final.csv")
    assert len(final) == 8 and {"gz_a_null_mean", "alpha_hg_b_z", "fdt_b_r2", "rank_alpha_hg_b"} <= set(final[0])
    assert len(rows(out / "spectra.csv")) == 4 * 8
    # layer 0's input is isotropic (H_a ≈ I), so H_b = W H_a Wᵀ ≈ Z_b: f-RWA ≈ 1 whatever γ
    for r in final:
        if r["layer"] == "0":
            assert float(r["hz_b"]) > 0.97
    head = metrics["headline_layer"]
    assert set(head) == {"wd=0", "wd=0.02"} and np.isfinite(head["wd=0.02"]["hz_a"]["z_final"])
    assert "all_six_above_null_z3_largest_wd" in metrics["checks"]
    # the checkpoint holds the finished run: a rerun resumes from it and trains nothing new
    assert (ckpt / "spectrax_loop.json").exists()
    again = tmp_path / "again"
    assert script().main(["--out", str(again), "--checkpoint", str(ckpt), *SMALL]) == 0
    first = np.array([float(r["hg_b"]) for r in traj])
    second = np.array([float(r["hg_b"]) for r in rows(again / "trajectory.csv")])
    np.testing.assert_allclose(second, first, rtol=1e-6)


def test_alignment_experiment_refuses_bad_arguments(tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    assert script().main(["--out", str(out), *SMALL]) == 2
    assert script().main(["--out", str(tmp_path / "a"), *SMALL, "--steps", "1000"]) == 2  # not a multiple of 300
    assert script().main(["--out", str(tmp_path / "b"), *SMALL, "--weight-decays", "-1"]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
