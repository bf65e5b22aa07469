"""`analyze` writes a complete result folder atomically and never into the checkpoint."""

import csv
import json
import os

import pytest

from spectrax.analyses.analyze import analyze
from spectrax.cli import main
from tests.conftest import CHECKPOINTS, snapshot


def test_result_folder_contents(tmp_path):
    before = snapshot(CHECKPOINTS / "gpt2_bf16")
    out = analyze(CHECKPOINTS / "gpt2_bf16", tmp_path / "res", num_draws=4, progress=False)
    assert snapshot(CHECKPOINTS / "gpt2_bf16") == before
    files = set(os.listdir(out))
    assert {"heads.csv", "heads.json", "layers.csv", "matrices.csv", "matrices.json", "summary.json", "report.md",
            "heatmap_pearson_qk_z.png", "trend_pearson_qk.png", "heatmap_matrices_erank_z.png"} <= files
    for png in (f for f in files if f.endswith(".png")):
        assert os.path.getsize(os.path.join(out, png)) > 5000
    with open(os.path.join(out, "heads.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4
    for column in ("layer", "head", "kv_head", "pearson_qk", "pearson_qk_null_mean", "pearson_qk_null_std",
                   "ssr_qk", "cos_u_qk", "cos_u_qk_null_mean", "grassmann_kv", "sigma_max_q", "cond_v"):
        assert column in rows[0]
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    assert summary["spec"]["model_type"] == "gpt2" and summary["nonfinite_heads"] == []
    report = open(os.path.join(out, "report.md")).read()
    assert "## Per-head statistics (laws)" in report and "## Whole-matrix statistics (rank)" in report
    with open(os.path.join(out, "matrices.csv")) as f:
        matrices = list(csv.DictReader(f))
    assert {m["matrix"] for m in matrices} == {"embed.tokens", "attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"}
    assert summary["rank"]["attn.q"]["erank"]["mean"] > 0


def test_rank_only_with_crop(tmp_path):
    out = analyze(CHECKPOINTS / "llama", tmp_path / "res", analyses=["rank"], crop=32, num_draws=4, progress=False)
    assert not os.path.exists(os.path.join(out, "heads.csv"))
    with open(os.path.join(out, "matrices.csv")) as f:
        rows = list(csv.DictReader(f))
    assert all(int(r["rows"]) <= 32 and int(r["cols"]) <= 32 for r in rows)
    assert "top-left 32x32" in open(os.path.join(out, "report.md")).read()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".res.tmp")]


def test_existing_output_folder_is_refused(tmp_path):
    (tmp_path / "res").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        analyze(CHECKPOINTS / "gpt2", tmp_path / "res", num_draws=2, progress=False)


def test_output_inside_checkpoint_is_refused():
    with pytest.raises(ValueError, match="inside the checkpoint"):
        analyze(CHECKPOINTS / "gpt2", CHECKPOINTS / "gpt2" / "results", num_draws=2, progress=False)
    assert not (CHECKPOINTS / "gpt2" / "results").exists()


def test_failed_run_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown analyses"):
        analyze(CHECKPOINTS / "gpt2", tmp_path / "res", analyses=["nope"], progress=False)
    assert os.listdir(tmp_path) == []


def test_cli_analyze_without_path_uses_embedded_checkpoint(tmp_path, capsys):
    assert main(["analyze", "--out", str(tmp_path / "r"), "--null-draws", "4"]) == 0
    assert "pearson_qk" in capsys.readouterr().out
    assert (tmp_path / "r" / "heads.csv").exists()
