"""The command line, run as a user would."""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from spectrax.cli import main
from tests.conftest import CHECKPOINTS, snapshot


def test_inspect_json_fields(capsys):
    assert main(["inspect", str(CHECKPOINTS / "qwen3_bf16"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {k: info[k] for k in ("model_type", "num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size", "dtype")} == {
        "model_type": "qwen3", "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 24, "hidden_size": 64,
        "dtype": "bfloat16"}
    assert info["layer_differences"] == []
    q = next(t for t in info["tensors"] if t["name"] == "model.layers.1.self_attn.q_proj.weight")
    assert q == {"name": q["name"], "dtype": "BF16", "shape": [96, 64], "bytes": 96 * 64 * 2, "file": "model.safetensors"}
    assert sum(t["bytes"] for t in info["tensors"]) == info["total_bytes"]


def test_inspect_reports_per_layer_differences(capsys):
    assert main(["inspect", str(CHECKPOINTS / "gemma3_text"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layer_differences"] == [{"layer": 2, "head_dim": 24, "layer_type": "full_attention"}]


def test_inspect_human_readable(capsys):
    assert main(["inspect", str(CHECKPOINTS / "llama_sharded"), "--tensors"]) == 0
    out = capsys.readouterr().out
    assert "4 query, 2 key/value" in out and "4 file(s)" in out and "head_dim        24" in out
    assert "model.layers.0.self_attn.k_proj.weight" in out and "(48, 64)" in out


def test_errors_are_one_clear_line(tmp_path, capsys):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    (tmp_path / "config.json").write_text("{}")
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spectrax inspect: error:") and "pickle" in err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "spectrax", "inspect", str(CHECKPOINTS / "gpt2"), "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["model_type"] == "gpt2"


# What the command line may and may not do to the user's files (nothing lost, one line, resumable).

def _only_error_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("spectrax")]  # progress bars aside
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _folder_with_checkpoints(tmp_path, *names):
    parent = tmp_path / "P"
    parent.mkdir()
    for name in names:
        shutil.copytree(CHECKPOINTS / "gpt2", parent / name)
    (parent / "notes.txt").write_text("the user's own file")
    return parent


@pytest.mark.parametrize("how", ["out-is-parent", "out-is-cwd"])
def test_force_never_deletes_the_checkpoint_being_analyzed(tmp_path, monkeypatch, capsys, how):
    parent = _folder_with_checkpoints(tmp_path, "ckpt")
    before = snapshot(tmp_path)
    if how == "out-is-cwd":
        monkeypatch.chdir(parent)
        argv = ["analyze", "ckpt", "--out", ".", "--force"]
    else:
        argv = ["analyze", str(parent / "ckpt"), "--out", str(parent), "--force"]
    assert main(argv + ["--analyses", "rank", "--null-draws", "2"]) == 2
    _only_error_line(capsys.readouterr().err, "contains the checkpoint")
    assert snapshot(tmp_path) == before


def test_force_never_deletes_the_checkpoints_being_compared(tmp_path, capsys):
    parent = _folder_with_checkpoints(tmp_path, "A", "B")
    before = snapshot(tmp_path)
    assert main(["compare", str(parent / "A"), str(parent / "B"), "--out", str(parent), "--force",
                 "--analyses", "rank", "--null-draws", "2"]) == 2
    _only_error_line(capsys.readouterr().err, "contains the checkpoint")
    assert snapshot(tmp_path) == before


def test_force_refuses_any_folder_spectrax_did_not_write(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("1,2,3")
    assert main(["analyze", str(CHECKPOINTS / "gpt2"), "--out", str(mine), "--force", "--analyses", "rank"]) == 2
    _only_error_line(capsys.readouterr().err, "not written by spectrax", str(mine))
    assert os.listdir(mine) == ["data.csv"]


@pytest.mark.parametrize("option, value, named", [
    ("--layers", "5-2", "--layers"), ("--layers", "0-20000000", "--layers"), ("--layers", "x", "--layers"),
    ("--layers", "9", "--layers"), ("--crop", "-8", "--crop"), ("--crop", "0", "--crop"),
    ("--null-draws", "1", "--null-draws"), ("--top-k", "0", "--top-k"), ("--shuffle-draws", "1", "--shuffle-draws"),
])
def test_bad_options_are_one_line_naming_the_option(tmp_path, capsys, option, value, named):
    out = tmp_path / "out"
    assert main(["analyze", str(CHECKPOINTS / "gpt2"), "--out", str(out), option, value]) == 2
    err = capsys.readouterr().err
    _only_error_line(err, named)
    assert len(err) < 300 and os.listdir(tmp_path) == []


def test_dangling_symlink_and_read_only_out_refused_before_any_work(tmp_path, monkeypatch, capsys):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert main(["analyze", str(CHECKPOINTS / "gpt2"), "--out", str(tmp_path / "link"), "--analyses", "rank"]) == 2
    _only_error_line(capsys.readouterr().err, "symbolic link")
    from spectrax.run import store as output

    monkeypatch.setattr(output.os, "access", lambda path, mode: False)  # what a read-only mount answers
    assert main(["analyze", str(CHECKPOINTS / "gpt2"), "--out", str(tmp_path / "ro" / "out"), "--analyses", "rank"]) == 2
    _only_error_line(capsys.readouterr().err, "cannot write in")
    assert sorted(os.listdir(tmp_path)) == ["link"]


@pytest.mark.slow
def test_ctrl_c_and_a_full_disk_are_one_line_and_resume(tmp_path, monkeypatch, capsys):
    from spectrax.run import streaming as pipeline
    from spectrax.run.store import RunFolder

    out = tmp_path / "out"
    argv = ["analyze", str(CHECKPOINTS / "gpt2"), "--out", str(out), "--analyses", "rank", "--null-draws", "2", "--crop", "16"]
    real_save = RunFolder.save

    def fail_after_first(exc):
        def save(self, name, arrays):
            if os.listdir(os.path.join(os.path.dirname(self.path), "parts")):
                raise exc
            real_save(self, name, arrays)
        return save

    monkeypatch.setattr(RunFolder, "save", fail_after_first(KeyboardInterrupt()))
    assert main(argv) == 130
    _only_error_line(capsys.readouterr().err, "interrupted", "1 finished part(s) kept", f"--out {out}", "resumes")
    monkeypatch.setattr(RunFolder, "save", fail_after_first(OSError(errno.ENOSPC, "No space left on device", str(out))))
    assert main(argv) == 1
    _only_error_line(capsys.readouterr().err, "No space left on device", "1 finished part(s) kept")
    monkeypatch.setattr(RunFolder, "save", real_save)
    calls = []
    real_layer = pipeline.layer_results
    monkeypatch.setattr(pipeline, "layer_results", lambda *a, **k: calls.append(a[1]) or real_layer(*a, **k))
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_parts"] == 1 and calls == [0, 1]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_version(capsys):
    import spectrax

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"spectrax {spectrax.__version__}"


def test_piping_into_head_is_quiet():
    done = subprocess.run(f"{sys.executable} -m spectrax inspect {CHECKPOINTS / 'llama_sharded'} --tensors | true",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert done.stderr == "", done.stderr


def test_help_imports_neither_jax_nor_the_analyses():
    """`spectrax --help` and `spectrax analyze --help` parse arguments only (see benchmarks/RESULTS.md
    for the time): JAX, numpy, matplotlib and the analyses are imported once a command runs."""
    code = ("import sys, spectrax, spectrax.cli\n"
            "for argv in (['--help'], ['analyze', '--help'], ['--version']):\n"
            "    try:\n        spectrax.cli.main(argv)\n    except SystemExit as e:\n        assert e.code == 0\n"
            "heavy = [m for m in ('jax', 'numpy', 'matplotlib', 'spectrax.analyses', 'spectrax.io') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "laws, rank, kernel, esd" in subprocess.run(
        [sys.executable, "-m", "spectrax", "analyze", "--help"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "300"}).stdout


def test_the_help_lists_every_analysis():
    from spectrax import cli
    from spectrax.analyses.registry import ANALYSES, DEFAULT

    assert cli.ANALYSIS_NAMES == tuple(ANALYSES) and cli.DEFAULT_ANALYSES == DEFAULT


def test_lazy_package_attributes():
    import spectrax

    assert spectrax.load is spectrax.io.load and spectrax.spectral.svd is not None
    assert {"load", "io", "spectral", "configure_cpu"} <= set(dir(spectrax))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        spectrax.nothing
