"""`compare`: a checkpoint against itself differs by exactly zero; a perturbed copy differs where,
and only where, it was perturbed."""

import csv
import importlib
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from spectrax.run.comparison import compare, difference_table
from spectrax.cli import main
from tests.conftest import CHECKPOINTS, snapshot


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _perturbed_copy(tmp_path):
    """The llama fixture with layer 1's W_Q given a strong rank-2 spike."""
    copy = tmp_path / "llama_tuned"
    shutil.copytree(CHECKPOINTS / "llama", copy)
    tensors = load_file(str(copy / "model.safetensors"))
    name = "model.layers.1.self_attn.q_proj.weight"
    w = tensors[name]
    rng = np.random.default_rng(0)
    spike = 3 * np.abs(w).max() * (rng.standard_normal((w.shape[0], 2)) @ rng.standard_normal((2, w.shape[1])))
    tensors[name] = (w + spike).astype(w.dtype)
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    return copy


@pytest.mark.slow
def test_a_checkpoint_compared_with_itself_differs_by_zero(tmp_path):
    before = snapshot(CHECKPOINTS / "llama")
    out = compare(CHECKPOINTS / "llama", CHECKPOINTS / "llama", tmp_path / "cmp", num_draws=8, progress=False,
                  plots=False)  # the next test draws the figures (and shares these compiled programs)
    assert snapshot(CHECKPOINTS / "llama") == before
    for table in ("heads_diff.csv", "matrices_diff.csv", "layers_diff.csv"):
        rows = _rows(os.path.join(out, table))
        diffs = [float(r[c]) for r in rows for c in r if c.endswith("_diff") and r[c] != ""]
        assert diffs and all(d == 0 for d in diffs)
    assert {"a", "b", "report.md", "summary.json", "groups_diff.csv"} <= set(os.listdir(out))
    assert os.path.exists(os.path.join(out, "a", "heads.csv"))


@pytest.mark.slow
def test_perturbed_layer_is_found_and_only_it(tmp_path):
    tuned = _perturbed_copy(tmp_path)
    out = compare(CHECKPOINTS / "llama", tuned, tmp_path / "cmp", num_draws=8, progress=False)
    heads = _rows(os.path.join(out, "heads_diff.csv"))
    for row in heads:
        moved = abs(float(row["ssr_qk_diff_z"])) > 2 and float(row["sigma_max_q_diff"]) != 0
        assert moved == (row["layer"] == "1"), row["layer"]
        assert float(row["ssr_kv_diff"]) == 0  # K and V untouched everywhere
    matrices = {(r["layer"], r["matrix"]): r for r in _rows(os.path.join(out, "matrices_diff.csv"))}
    changed = {key for key, r in matrices.items() if float(r["erank_diff"]) != 0}
    assert changed == {("1", "attn.q")}
    assert float(matrices[("1", "attn.q")]["erank_diff_z"]) < -2  # a spike lowers the effective rank
    summary = json.loads(pathlib.Path(os.path.join(out, "summary.json")).read_text())
    assert summary["labels"] == ["llama", "llama_tuned"]
    assert summary["matrices"]["erank"]["count"] == 1
    groups = _rows(os.path.join(out, "groups_diff.csv"))
    assert float(groups[0]["ssr_qk_relative_change"]) == 0 and float(groups[1]["ssr_qk_relative_change"]) != 0
    assert "Comparison: llama vs llama_tuned" in pathlib.Path(os.path.join(out, "report.md")).read_text()
    assert os.path.getsize(os.path.join(out, "plots", "compare_ssr_qk.png")) > 5000


def test_different_architectures_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not the same architecture"):
        compare(CHECKPOINTS / "llama", CHECKPOINTS / "mistral", tmp_path / "cmp", progress=False)
    assert os.listdir(tmp_path) == []


def test_difference_table_needs_aligned_rows():
    a = {"layer": np.array([0, 1]), "x": np.array([1.0, 2.0]), "x_null_std": np.array([1.0, 1.0])}
    b = {"layer": np.array([0, 1]), "x": np.array([1.0, 5.0]), "x_null_std": np.array([1.0, 1.0])}
    d = difference_table(a, b)
    np.testing.assert_allclose(d["x_diff"], [0, 3])
    np.testing.assert_allclose(d["x_diff_z"], [0, 3 / np.sqrt(2)])
    with pytest.raises(ValueError, match="column 'layer'"):
        difference_table(a, {**b, "layer": np.array([0, 2])})


@pytest.mark.slow
def test_cli_compare(tmp_path, capsys):
    assert main(["compare", str(CHECKPOINTS / "gpt2"), str(CHECKPOINTS / "gpt2"), "--out", str(tmp_path / "c"),
                 "--null-draws", "2", "--analyses", "laws", "--no-plots"]) == 0
    assert "Comparison" in capsys.readouterr().out
    assert not any(p.name == "plots" for p in (tmp_path / "c").rglob("*"))  # neither a/, b/ nor the differences


def test_compare_interrupted_after_the_first_checkpoint_resumes(tmp_path, monkeypatch):
    compare_module = importlib.import_module("spectrax.run.comparison")  # the package exports the function

    options = dict(analyses=["rank"], num_draws=2, crop=16, progress=False, plots=False)
    real = compare_module.write_results
    written = []

    def crash_on_second(tables, folder, *args, **kwargs):
        if written:
            raise KeyboardInterrupt
        written.append(folder)
        real(tables, folder, *args, **kwargs)

    monkeypatch.setattr(compare_module, "write_results", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        compare(CHECKPOINTS / "gpt2", CHECKPOINTS / "gpt2_bf16", tmp_path / "c", **options)
    assert os.path.isdir(written[0]) and not (tmp_path / "c").exists()
    monkeypatch.setattr(compare_module, "write_results", real)
    out = compare(CHECKPOINTS / "gpt2", CHECKPOINTS / "gpt2_bf16", tmp_path / "c", **options)
    summary = json.loads(pathlib.Path(os.path.join(out, "a", "summary.json")).read_text())
    assert summary["resumed_parts"] == 2 * 3  # globals and two layers of each checkpoint
    assert sorted(os.listdir(tmp_path)) == ["c"]
