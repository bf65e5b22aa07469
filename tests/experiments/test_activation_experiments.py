"""The activation scripts run end to end on the embedded model and on a fixture, and refuse bad input."""

import json

import numpy as np
import pytest

from tests.conftest import experiment as script, csv_rows as rows, CHECKPOINTS


@pytest.mark.slow
def test_activation_spectra(tmp_path):
    out = tmp_path / "spectra"
    assert script("activation_spectra").main(["--out", str(out), "--batch", "8", "--length", "16",
                                              "--null-draws", "4", "--quiet"]) == 0
    table = rows(out / "streams.csv")
    assert len(table) == 5 and {"erank", "erank_null_mean", "erank_z", "num_spikes_null_std"} <= set(table[0])
    # the trained embedded model's residual stream is lower-rank than Gaussian samples at every depth
    assert all(float(r["erank_z"]) < -3 for r in table)
    assert (out / "plots" / "erank.png").stat().st_size > 10_000
    assert script("activation_spectra").main(["--out", str(out), "--quiet"]) == 2


@pytest.mark.slow
def test_subspace_energy_prints_percentiles_beyond_every_draw_as_bounds():
    table = {"energy": np.array([0.1, 0.2, 0.3]), "pct": np.array([0.0, 0.5, 1.0])}
    shown = script("subspace_energy").shown(table, 16)
    assert shown["pct"] == ["< 1/16", "50", "> 1 - 1/16"]
    assert table["pct"][0] == 0.0 and shown["energy"] is table["energy"]  # the CSV's table is untouched


def test_subspace_energy_given_pairs(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 120, (6, 9))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", a[:, ::-1].copy())
    out = tmp_path / "energy"
    args = [str(CHECKPOINTS / "gpt_neox"), "--out", str(out), "--ids-a", str(tmp_path / "a.npy"),
            "--ids-b", str(tmp_path / "b.npy"), "--layer", "1", "--k", "2,4", "--null-draws", "16", "--quiet"]
    assert script("subspace_energy").main(args) == 0
    table = rows(out / "energy.csv")
    assert len(table) == 4 * 2 and {r["deltas"] for r in table} == {"given"}
    for r in table:
        assert float(r["chance"]) == int(r["k"]) / 64 and 0 <= float(r["energy"]) <= 1
    assert json.loads((out / "summary.json").read_text())["pairs"] == {"given": 6}
    assert script("subspace_energy").main(args[:-1] + ["--out", str(tmp_path / "x"), "--k", "99"]) == 2
    assert script("subspace_energy").main([str(CHECKPOINTS / "gpt_neox"), "--out", str(tmp_path / "y"),
                                           "--ids-a", str(tmp_path / "a.npy")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_activation_alignment(tmp_path):
    out = tmp_path / "align"
    assert script("activation_alignment").main([str(CHECKPOINTS / "qwen3"), "--out", str(out), "--batch", "4",
                                                "--length", "8", "--null-draws", "4", "--top-k", "4",
                                                "--quiet"]) == 0
    table = rows(out / "alignment.csv")
    assert [(r["layer"], r["projection"]) for r in table] == [(str(l), p) for l in range(2) for p in "kqv"]
    for r in table:
        assert -1 <= float(r["hz_b"]) <= 1 and "hz_b_z" in r
    assert np.isfinite(json.loads((out / "summary.json").read_text())["loss"])
    np.save(tmp_path / "bad.npy", np.full((2, 4), 10_000))
    assert script("activation_alignment").main(["--out", str(tmp_path / "z"), "--ids", str(tmp_path / "bad.npy")]) == 2
