"""Every config field is checked by type and range: `spectrax inspect` exits 2 with one line naming
the file and the field, fast and in bounded memory, and the checkpoint is left as it was."""

import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc

import pytest

from spectrax.cli import main
from tests.conftest import CHECKPOINTS, snapshot


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(CHECKPOINTS / "llama", path)
    return path


def _write_config(path, text: str) -> None:
    (path / "config.json").write_text(text)


def _with(path, **changes) -> str:
    config = json.loads((path / "config.json").read_text())
    return json.dumps({**config, **changes})


def _refused(path, capsys, *expected: str, names_file: bool = True) -> str:
    """Run `spectrax inspect`, expect exit code 2 and one stderr line holding every `expected` part
    (and the path of config.json when `names_file`)."""
    before = snapshot(path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 600, err
    for part in (str(path / "config.json"),) * names_file + expected:
        assert part in err, err
    assert snapshot(path) == before
    return err


@pytest.mark.parametrize("changes,expected", [
    ({"tie_word_embeddings": "false"}, "field 'tie_word_embeddings' must be true or false, got 'false'"),
    ({"rms_norm_eps": "abc"}, "field 'rms_norm_eps' must be a positive finite number, got 'abc'"),
    ({"rms_norm_eps": [1e-5]}, "field 'rms_norm_eps' must be a positive finite number, got a list ([1e-05])"),
    ({"rms_norm_eps": 0}, "field 'rms_norm_eps' must be a positive finite number, got 0"),
    ({"model_type": ["llama"]}, "field 'model_type' must be a string, got a list"),
    ({"model_type": 7}, "field 'model_type' must be a string, got 7"),
    ({"torch_dtype": 16}, "field 'torch_dtype' must be a string or null, got 16"),
    ({"dtype": {"x": 1}}, "field 'dtype' must be a string or null, got an object"),
    ({"quantization_config": "gptq"}, "field 'quantization_config' must be an object, got 'gptq'"),
    ({"num_hidden_layers": 100000000}, "field 'num_hidden_layers' must be an integer from 1 to 65536, got 100000000"),
    ({"num_hidden_layers": True}, "field 'num_hidden_layers' must be an integer from 1 to 65536, got True"),
    ({"num_attention_heads": 2.0}, "field 'num_attention_heads' must be a positive integer, got 2.0"),
    ({"rope_parameters": "linear"}, "field 'rope_parameters' must be an object or null, got 'linear'"),
    ({"layer_types": "full_attention"}, "field 'layer_types' must be a list of strings"),
    ({"rope_interleaved": "yes"}, "field 'rope_interleaved' must be true or false"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": "1e4"}},
     "field 'rope_parameters.rope_theta' must be a positive finite number, got '1e4'"),
    ({"rope_parameters": {"full_attention": {"rope_theta": -1}}},
     "field 'rope_parameters.full_attention.rope_theta' must be a positive finite number, got -1"),
    ({"is_encoder_decoder": True}, "is_encoder_decoder=True is not supported for llama"),
    ({"use_mrope": False}, "'use_mrope' not understood for model_type 'llama'"),
])
def test_bad_field_is_named(checkpoint, capsys, changes, expected):
    _write_config(checkpoint, _with(checkpoint, **changes))
    _refused(checkpoint, capsys, expected)


@pytest.mark.parametrize("field,literal,expected", [
    ("num_hidden_layers", "9" * 5000,
     "field 'num_hidden_layers' must be an integer from 1 to 65536, got an integer with 5000 digits"),
    ("rms_norm_eps", "NaN", "field 'rms_norm_eps' must be a positive finite number, got nan"),
    ("rope_theta", "1e999", "field 'rope_theta' must be a positive finite number, got inf"),
])
def test_numbers_python_cannot_use_are_named(checkpoint, capsys, field, literal, expected):
    _write_config(checkpoint, _with(checkpoint, **{field: "@"}).replace('"@"', literal))
    _refused(checkpoint, capsys, expected)


def test_many_unknown_keys_are_counted_not_listed(checkpoint, capsys):
    _write_config(checkpoint, _with(checkpoint, **{f"option_{i:02d}": i for i in range(40)}))
    err = _refused(checkpoint, capsys, "'option_00'", "(40 in all)", "--allow-unknown-config")
    assert "option_39" not in err


def test_deeply_nested_config(checkpoint, capsys):
    _write_config(checkpoint, _with(checkpoint, extra="@").replace('"@"', "[" * 200_000 + "]" * 200_000))
    _refused(checkpoint, capsys, "nested too deeply")


@pytest.mark.parametrize("text,expected", [("[1, 2]", "expected a JSON object, got list"), ("{", "not valid JSON")])
def test_config_that_is_not_an_object(checkpoint, capsys, text, expected):
    _write_config(checkpoint, text)
    _refused(checkpoint, capsys, expected)


def test_config_json_that_is_a_directory(checkpoint, capsys):
    (checkpoint / "config.json").unlink()
    (checkpoint / "config.json").mkdir()
    _refused(checkpoint, capsys, "not a regular file")


def test_config_json_that_is_a_fifo_does_not_block(checkpoint):
    (checkpoint / "config.json").unlink()
    os.mkfifo(checkpoint / "config.json")
    done = subprocess.run([sys.executable, "-m", "spectrax", "inspect", str(checkpoint)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("config.json: not a regular file (a folder, FIFO or device)")


def test_layer_count_far_beyond_the_tensors_fails_fast_in_bounded_memory(checkpoint, capsys):
    """60000 layers claimed by a 2-layer checkpoint: the error names a few missing layers and a count."""
    _write_config(checkpoint, _with(checkpoint, num_hidden_layers=60000))
    tracemalloc.start()
    started = time.perf_counter()
    err = _refused(checkpoint, capsys, "config says 60000 layers", "missing [2, 3, 4, 5, 6, ...] (59998 in all)",
                   names_file=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 << 20 and time.perf_counter() - started < 30, (peak, err)
