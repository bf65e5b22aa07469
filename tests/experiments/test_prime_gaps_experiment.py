"""experiments/prime_gaps.py end to end at a tiny size (the sinusoidal encoding, the source's Plan C;
tests/dynamics/test_prime_gaps.py trains the learned one): both variants train, the zero-gradient and
weight-decay checks come out as the theory says, the tables and figures are written, the
checkpoint folders are claimed, and user errors exit with status 2.

No `__init__.py` here (see test_experiments.py): the script is imported from `experiments/`.
"""

import json
import math
import os

import numpy as np
import pytest


from spectrax.dynamics.loop import saved_settings  # noqa: E402
from tests.conftest import experiment, csv_rows as read_csv


def script():
    return experiment("prime_gaps")


TINY = ["--primes", "400", "--layers", "2", "--width", "16", "--heads", "2", "--mlp", "16", "--encoding", "sinusoidal", "--window", "4", "--steps", "24",
        "--chunk", "12", "--batch-size", "32", "--eval-every", "8", "--null-draws", "3", "--lr", "3e-3",
        "--weight-decay", "0.05"]


@pytest.mark.slow
def test_prime_gaps_end_to_end(tmp_path):
    out, ckpt = tmp_path / "pg", tmp_path / "ckpt"
    assert script().main(["--out", str(out), "--checkpoint", str(ckpt), "--quiet", *TINY]) == 0
    assert {"metrics.json", "trajectory.csv", "gradients.csv", "rank_statistics.csv", "qk_kernel.csv",
            "loss.png", "excess.png", "rank.png"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    checks = metrics["checks"]
    assert checks["single_qk_grad_exactly_zero"] and checks["single_qk_grad_zero_every_step"]
    assert checks["single_other_grads_nonzero"]
    assert checks["single_q_decay_identity_error"] < 1e-5 and checks["single_k_decay_identity_error"] < 1e-5
    assert checks["window_q_excess_change"] > 1e-3 and checks["window_qk_grad_max"] > 0
    single, window = metrics["variants"]["single"], metrics["variants"]["window"]
    # the decay factor is the product of (1 - lr_t wd) over the cosine schedule actually run
    lr = np.array([float(r["lr"]) for r in read_csv(out / "trajectory.csv") if r["variant"] == "single"])
    assert len(lr) == 24 and math.isclose(single["decay_factor"], float(np.prod(1 - 0.05 * lr)), rel_tol=1e-9)
    assert single["attention_entropy"]["trained"] == 0.0 and window["attention_entropy"]["uniform"] == math.log(4)
    assert window["attention_entropy"]["trained"] != window["attention_entropy"]["init"]
    np.testing.assert_allclose(single["qk_kernel_erank"]["trained"], single["qk_kernel_erank"]["init"], rtol=1e-4)
    for v in (single, window):  # R^2 against the predict-the-mean baseline, from the MSEs
        assert v["test_r2"] < 1 and v["train_mse"] > 0
    grads = read_csv(out / "gradients.csv")
    zero = [r for r in grads if r["zero_by_theory"] == "1"]
    assert len(zero) == 8 and all(float(r["max_abs_grad"]) == 0.0 for r in zero)  # 4 params x {init, trained}
    assert all(float(r["max_abs_grad"]) > 0 for r in grads if r["variant"] == "window" and r["parameter"] in ("q", "k"))
    rank = read_csv(out / "rank_statistics.csv")
    assert len(rank) == 12 + 12  # 2 layers x (q, k, v, o, up, down); no index table when sinusoidal
    for r in rank:
        if r["variant"] == "single" and r["matrix"] in ("l0.q", "l1.k"):
            # scale-free statistics of W_Q / W_K: the initialization's, whatever the training did
            for stat in ("erank", "stable_rank", "max_mean"):
                assert math.isclose(float(r[stat]), float(r[f"{stat}_init"]), rel_tol=1e-4)
        assert float(r["erank_null_std"]) > 0
    assert any(abs(float(r["erank"]) - float(r["erank_init"])) > 1e-4 * float(r["erank_init"])
               for r in rank if r["variant"] == "window" and r["matrix"].endswith((".q", ".k")))
    assert len(read_csv(out / "qk_kernel.csv")) == 2 * 2 * 2
    assert (out / "rank.png").stat().st_size > 20_000
    # the checkpoints hold each variant's settings; other settings in the same folder are refused
    assert saved_settings(ckpt / "single")["variant"] == "single" and saved_settings(ckpt / "window")["steps"] == 24
    other = [a if a != "0.05" else "0.02" for a in TINY]
    assert script().main(["--out", str(tmp_path / "other"), "--checkpoint", str(ckpt), "--quiet", *other]) == 2
    assert not (tmp_path / "other").exists()
    # an existing --out and a window of one token are refused, before any work
    assert script().main(["--out", str(out), "--quiet", *TINY]) == 2
    assert script().main(["--out", str(tmp_path / "w1"), "--quiet", *TINY, "--window", "1"]) == 2
