"""experiments/galore_lm.py end to end at a tiny size: it writes its tables and figures, its memory
numbers are those of the paper's formula, it resumes from its checkpoint with the same numbers,
and it refuses an existing --out.

No `__init__.py` in this folder on purpose (see test_experiments.py): the script is imported from
the repository's own `experiments/` folder.
"""

import csv
import importlib
import json
import os

import jax
import numpy as np
import pytest


TINY = ["--steps", "30", "--chunk", "15", "--seeds", "2", "--ranks", "4", "--vocab", "16", "--embed", "8",
        "--hidden", "32", "--batch", "8", "--length", "10", "--quiet"]


def galore_lm():
    return importlib.import_module("experiments.galore_lm")


def rows(path):
    with open(path, newline="") as fh:
        return {r["run"]: r for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_galore_lm_end_to_end_and_resume(tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    assert galore_lm().main(["--out", str(out), "--checkpoint", str(ckpt), *TINY]) == 0
    assert {"metrics.json", "summary.csv", "curves.csv", "loss.png", "memory.png"} <= set(os.listdir(out))
    summary = rows(out / "summary.csv")
    assert set(summary) == {"adam", "galore_r4"}
    # memory: Adam = 2 floats per parameter + count; GaLore projects w1 (16, 32) (left, P (16, 4),
    # moments (4, 32)) and w2 (32, 32) (right, P (32, 4), moments (32, 4)); the rest as Adam
    sizes = {"embed": 16 * 8, "w1": 16 * 32, "b1": 32, "w2": 32 * 32, "b2": 32, "w_out": 32 * 16, "b_out": 16}
    adam = 4 * 2 * sum(sizes.values()) + 4
    full = sum(v for k, v in sizes.items() if k not in ("w1", "w2"))
    galore = 4 * (2 * full + (16 * 4 + 2 * 32 * 4) + (32 * 4 + 2 * 32 * 4)) + 2 * 4
    assert float(summary["adam"]["state_bytes"]) == adam and float(summary["galore_r4"]["state_bytes"]) == galore
    metrics = json.loads((out / "metrics.json").read_text())
    floor = metrics["entropy_floor_mean"]
    assert 0 < floor < metrics["ln_V"]
    for name, run in metrics["runs"].items():
        curve = np.array(run["loss_curve"])
        assert curve.shape == (30,) and np.all(np.isfinite(curve))
        assert curve[-5:].mean() < curve[:5].mean()  # both optimizers learn
        # nobody beats the Bayes loss of the held-out batch by more than sampling noise
        assert min(np.array(run["eval_loss"]) - np.array(run["eval_floor"])) > -0.05
    with open(out / "curves.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 30
    # a second run with the same checkpoint resumes at the end: the same numbers, no training
    again = tmp_path / "again"
    assert galore_lm().main(["--out", str(again), "--checkpoint", str(ckpt), *TINY]) == 0
    second = json.loads((again / "metrics.json").read_text())
    for name in metrics["runs"]:
        np.testing.assert_allclose(second["runs"][name]["eval_loss"], metrics["runs"][name]["eval_loss"], rtol=1e-6)
        np.testing.assert_allclose(second["runs"][name]["loss_curve"], metrics["runs"][name]["loss_curve"],
                                   rtol=1e-6)
    # refused, exit status 2 and nothing written: an existing --out, a bad rank
    assert galore_lm().main(["--out", str(out), *TINY]) == 2
    assert galore_lm().main(["--out", str(tmp_path / "y"), *TINY[:-1], "--ranks", "0", "--quiet"]) == 2
    assert not (tmp_path / "y").exists()
    jax.clear_caches()
