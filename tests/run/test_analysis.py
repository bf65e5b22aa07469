"""`analyze` writes a complete result folder atomically, resumes interrupted runs and never writes
into the checkpoint; its tables equal the kernels computed directly."""

import csv
import json
import os
import pathlib

import numpy as np
import pytest

import spectrax as sx
from spectrax.run import streaming as pipeline
from spectrax.run.analysis import analyze
from spectrax.cli import main
from spectrax.run.store import MARKER, atomic_output_dir
from tests.conftest import CHECKPOINTS, snapshot


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def gpt2_result(tmp_path_factory):
    before = snapshot(CHECKPOINTS / "gpt2_bf16")
    out = analyze(CHECKPOINTS / "gpt2_bf16", tmp_path_factory.mktemp("r") / "res", num_draws=4, progress=False)
    assert snapshot(CHECKPOINTS / "gpt2_bf16") == before
    return out


@pytest.mark.slow
def test_result_folder_contents(gpt2_result):
    out = gpt2_result
    files = set(os.listdir(out))
    assert {"heads.csv", "heads.json", "layers.csv", "groups.csv", "precision.csv", "matrices.csv", "matrices.json",
            "kernel_similarity.csv", "skipped.csv", "summary.json", "report.md", "plots", MARKER} == files
    pngs = os.listdir(os.path.join(out, "plots"))
    assert {"heatmap_pearson_qk_z.png", "trend_pearson_qk.png", "heatmap_matrices_erank_z.png",
            "kernel_similarity.png", "trend_kernel_erank.png", "heatmap_matrices_lambda_max_z.png"} <= set(pngs)
    assert any(p.startswith("spectrum_") for p in pngs)
    for png in pngs:
        assert os.path.getsize(os.path.join(out, "plots", png)) > 5000
    rows = _rows(os.path.join(out, "heads.csv"))
    assert len(rows) == 2 * 4
    for column in ("layer", "head", "kv_head", "pearson_qk", "pearson_qk_null_mean", "pearson_qk_null_std",
                   "ssr_qk", "cos_u_qk", "cos_u_qk_null_mean", "grassmann_kv", "sigma_max_q", "cond_v",
                   "kernel_erank", "kernel_erank_null_mean", "ffn_alignment", "ffn_alignment_null_std",
                   "pearson_qk_diff", "pearson_qk_ratio", "pearson_qk_null_mean_se", "pearson_qk_null_std_se",
                   "pearson_qk_layer_null_std_se", "cos_u_qk_diff"):
        assert column in rows[0]
    skipped = _rows(os.path.join(out, "skipped.csv"))   # gpt2's fused c_attn in each layer, and the tied head
    assert {r["matrix"] for r in skipped} == {"lm_head.weight", "transformer.h.0.attn.c_attn.weight",
                                               "transformer.h.1.attn.c_attn.weight"}
    assert all(r["reason"] for r in skipped) and any("fused" in r["reason"] and " x " in r["shape"] for r in skipped)
    summary = json.loads(pathlib.Path(os.path.join(out, "summary.json")).read_text())
    assert summary["spec"]["model_type"] == "gpt2" and summary["laws"]["nonfinite_heads"] == []
    report = pathlib.Path(os.path.join(out, "report.md")).read_text()
    assert "`skipped.csv`" in report and "| gauge | invariant counterpart |" in report
    assert "grassmann_qk | " in report and "parametrization" in report
    model = summary["laws"]["model"]["pearson_qk"]
    assert {"diff", "ratio", "null_std_se", "resolved"} <= set(model)
    for title in ("## Per-head statistics (laws)", "## Whole-matrix statistics (rank)", "## QK-kernel subspaces (kernel)",
                  "## Empirical spectral densities (esd)", "## Files"):
        assert title in report
    matrices = _rows(os.path.join(out, "matrices.csv"))
    assert {m["matrix"] for m in matrices} == {"embed.tokens", "embed.positions", "attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"}
    assert "alpha" in matrices[0] and "alpha_shuffle_mean" in matrices[0] and "erank_null_mean" in matrices[0]
    assert summary["rank"]["attn.q"]["erank"]["mean"] > 0


@pytest.mark.slow
def test_tables_equal_kernels_and_aggregations_equal_hand_computation(gpt2_result):
    heads = _rows(os.path.join(gpt2_result, "heads.csv"))
    model = sx.load(CHECKPOINTS / "gpt2_bf16")
    attn = model.params["layers"][0]["attn"]
    for row in heads:
        layer, head, g = int(row["layer"]), int(row["head"]), int(row["kv_head"])
        sq = np.linalg.svd(np.asarray(attn["q"][layer, head], np.float64), compute_uv=False)
        sk = np.linalg.svd(np.asarray(attn["k"][layer, g], np.float64), compute_uv=False)
        assert float(row["pearson_qk"]) == pytest.approx(np.corrcoef(sq, sk)[0, 1], abs=1e-5)
        kernel = np.asarray(attn["q"][layer, head], np.float64).T @ np.asarray(attn["k"][layer, g], np.float64)
        s = np.linalg.svd(kernel, compute_uv=False)[: sq.size]
        p = s / s.sum()
        assert float(row["kernel_erank"]) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-4)
    layers = _rows(os.path.join(gpt2_result, "layers.csv"))
    for layer in layers:
        mine = [float(r["ssr_qk"]) for r in heads if r["layer"] == layer["layer"]]
        assert float(layer["ssr_qk"]) == pytest.approx(np.mean(mine))
        assert float(layer["ssr_qk_bulk"]) == pytest.approx(np.median(mine))  # gpt2: one query head per KV head
    groups = _rows(os.path.join(gpt2_result, "groups.csv"))
    assert [g["group"] for g in groups] == ["0-0", "1-1"]
    precision = {r["format"]: r for r in _rows(os.path.join(gpt2_result, "precision.csv"))}
    assert float(precision["bfloat16"]["L_quant"]) == 3 * 2**14


@pytest.mark.slow
def test_resumes_an_interrupted_run_with_identical_results(tmp_path, monkeypatch, gpt2_result):
    # the module's uninterrupted run is the reference: same checkpoint and settings, and its compiled
    # programs serve the interrupted and resumed runs
    path, reference = CHECKPOINTS / "gpt2_bf16", gpt2_result
    real = pipeline.layer_results
    seen = []

    def crash_on_second_layer(params, layer, *args, **kwargs):
        if seen:
            raise KeyboardInterrupt
        seen.append(layer)
        return real(params, layer, *args, **kwargs)

    monkeypatch.setattr(pipeline, "layer_results", crash_on_second_layer)
    with pytest.raises(KeyboardInterrupt):
        analyze(path, tmp_path / "resumed", num_draws=4, progress=False)
    assert not (tmp_path / "resumed").exists() and (tmp_path / ".resumed.partial").is_dir()
    monkeypatch.setattr(pipeline, "layer_results", real)
    with pytest.raises(FileExistsError, match="differing in: num_draws"):
        analyze(path, tmp_path / "resumed", num_draws=5, progress=False)
    # Figures do not change what is resumed, nor any number: the resumed run draws none.
    out = analyze(path, tmp_path / "resumed", num_draws=4, progress=False, plots=False)
    assert json.loads(pathlib.Path(os.path.join(out, "summary.json")).read_text())["resumed_parts"] == 2  # globals + layer 0
    for table in ("heads.csv", "matrices.csv", "layers.csv"):
        assert pathlib.Path(os.path.join(out, table)).read_text() == pathlib.Path(os.path.join(reference, table)).read_text()
    report = pathlib.Path(out, "report.md").read_text()
    assert "plots" not in os.listdir(out) and "Figures were not drawn (`--no-plots`)" in report
    assert "- `plots/`:" not in report and "- `plots/`:" in pathlib.Path(reference, "report.md").read_text()
    assert not (tmp_path / ".resumed.partial").exists()


def test_force_replaces_only_an_earlier_spectrax_result(tmp_path):
    with atomic_output_dir(tmp_path / "res") as earlier:  # what an earlier spectrax run published
        pathlib.Path(os.path.join(earlier, "stale.txt")).write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        analyze(CHECKPOINTS / "gpt2", tmp_path / "res", analyses=["rank"], num_draws=4, progress=False)
    out = analyze(CHECKPOINTS / "gpt2", tmp_path / "res", analyses=["rank"], num_draws=4, force=True, progress=False)
    assert "stale.txt" not in os.listdir(out) and "matrices.csv" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["res"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not written by spectrax"):
        analyze(CHECKPOINTS / "gpt2", tmp_path / "mine", analyses=["rank"], num_draws=4, force=True, progress=False)
    assert os.listdir(tmp_path / "mine") == ["a.txt"]


@pytest.mark.slow
def test_rank_only_with_crop(tmp_path):
    out = analyze(CHECKPOINTS / "llama", tmp_path / "res", analyses=["rank"], crop=32, num_draws=4, progress=False,
                  plots=False)
    assert not os.path.exists(os.path.join(out, "heads.csv"))
    rows = _rows(os.path.join(out, "matrices.csv"))
    assert all(int(r["rows"]) <= 32 and int(r["cols"]) <= 32 for r in rows)
    assert "top-left 32x32" in pathlib.Path(os.path.join(out, "report.md")).read_text()
    assert sorted(os.listdir(tmp_path)) == ["res"]


@pytest.mark.slow
def test_an_analysis_gives_the_same_numbers_alone_or_with_others(tmp_path, gpt2_result):
    """laws beside charge (not run by default) gives the numbers it gives beside rank, kernel and esd;
    charge adds its columns, its section and the laws' invariant counterparts."""
    alone = analyze(CHECKPOINTS / "gpt2_bf16", tmp_path / "laws", analyses=["laws", "charge"], num_draws=4, progress=False,
                    plots=False)
    together = {r["layer"] + "/" + r["head"]: r for r in _rows(os.path.join(gpt2_result, "heads.csv"))}
    for row in _rows(os.path.join(alone, "heads.csv")):
        other = together[row["layer"] + "/" + row["head"]]
        assert {c: row[c] for c in row if c in other} == {c: other[c] for c in row if c in other}
        assert float(row["qk_charge"]) >= 0 and "pearson_qk_balanced_z" in row and "qk_charge" not in other
    report = pathlib.Path(alone, "report.md").read_text()
    assert "## The symmetry's charge (charge)" in report and "pearson_qk_balanced = " in report
    assert "## The symmetry's charge" not in pathlib.Path(gpt2_result, "report.md").read_text()
    assert json.loads(pathlib.Path(alone, "summary.json").read_text())["charge"]["model"]["qk_charge"]["mean_over_layers"] > 0


@pytest.mark.slow
def test_no_null_draws_gives_the_statistics_and_exact_nulls_only(tmp_path, gpt2_result):
    """`num_draws=0` (`--null-draws 0`): every statistic as with draws, every exact null as with
    draws, every Monte Carlo null column NaN (its draws, errors and percentiles with it), and a
    complete report."""
    out = analyze(CHECKPOINTS / "gpt2_bf16", tmp_path / "none", num_draws=0, shuffle_draws=0, progress=False, plots=False)
    for table in ("heads.csv", "matrices.csv"):
        drawn, none = _rows(os.path.join(gpt2_result, table)), _rows(os.path.join(out, table))
        assert len(drawn) == len(none) and set(drawn[0]) == set(none[0])
        monte_carlo = {c[: -len("_pct")] for c in drawn[0] if c.endswith("_pct")}
        exact = {c[: -len("_null_mean")] for c in drawn[0] if c.endswith("_null_mean")} - monte_carlo
        assert monte_carlo and (exact or table == "matrices.csv")   # heads: cos_u_*, grassmann_* are exact
        for a, b in zip(drawn, none):
            for column, value in b.items():
                stat = next((s for s in monte_carlo if column.startswith(s + "_")), None)
                if column in monte_carlo or stat is None and "shuffle" not in column:
                    assert value == a[column], (table, column)          # statistics and exact nulls
                elif stat is not None and column[len(stat) + 1:] in ("null_mean", "null_std", "z", "pct"):
                    assert value in ("", "nan"), (table, column)       # Monte Carlo nulls: none
    report = pathlib.Path(os.path.join(out, "report.md")).read_text()
    assert "## Per-head statistics (laws)" in report and "## Empirical spectral densities (esd)" in report
    assert main(["analyze", str(CHECKPOINTS / "gpt2"), "--out", str(tmp_path / "one"), "--null-draws", "1"]) == 2
    assert not (tmp_path / "one").exists()


def test_output_inside_checkpoint_is_refused():
    with pytest.raises(ValueError, match="inside the checkpoint"):
        analyze(CHECKPOINTS / "gpt2", CHECKPOINTS / "gpt2" / "results", num_draws=2, progress=False)
    assert not (CHECKPOINTS / "gpt2" / "results").exists()


def test_unknown_analysis_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown analyses"):
        analyze(CHECKPOINTS / "gpt2", tmp_path / "res", analyses=["nope"], progress=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_cli_analyze_without_path_uses_embedded_checkpoint(tmp_path, capsys):
    assert main(["analyze", "--out", str(tmp_path / "r"), "--null-draws", "4", "--shuffle-draws", "2"]) == 0
    printed = capsys.readouterr().out
    assert "pearson_qk" in printed and "bottleneck" in printed
    assert (tmp_path / "r" / "heads.csv").exists()
    assert main(["analyze", "--out", str(tmp_path / "r"), "--null-draws", "4"]) == 2  # exists, no --force
