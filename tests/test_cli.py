"""The command line, run as a user would."""

import json
import subprocess
import sys

from spectrax.cli import main
from tests.conftest import CHECKPOINTS


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
