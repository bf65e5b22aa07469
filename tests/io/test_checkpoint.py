"""Bad checkpoints fail with errors that name the file, tensor or field, and nothing is written."""

import json
import os
import shutil
import stat

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import spectrax as sx
from spectrax.io import CheckpointError, ConfigError, UnsupportedCheckpointError
from tests.conftest import CHECKPOINTS, snapshot


def _copy(tmp_path, name="llama"):
    dst = tmp_path / name
    shutil.copytree(CHECKPOINTS / name, dst)
    return dst


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    for key, value in changes.items():
        if value is None:
            config.pop(key)
    (path / "config.json").write_text(json.dumps(config))


def _rewrite_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def test_index_pointing_to_missing_shard(tmp_path):
    path = _copy(tmp_path, "llama_sharded")
    shard = sorted(path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard '{shard.name}' is listed.*does not exist"):
        sx.load(path)


def test_index_naming_a_tensor_its_shard_lacks(tmp_path):
    path = _copy(tmp_path, "llama_sharded")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.self_attn.q_proj.weight"] = sorted(set(index["weight_map"].values()))[-1]
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model.layers.0.self_attn.q_proj.weight"):
        sx.load(path)


def test_missing_tensor_is_named(tmp_path):
    path = _copy(tmp_path)
    _rewrite_tensors(path, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight.*is missing"):
        sx.load(path)


def test_unknown_layer_tensor_is_not_dropped_silently(tmp_path):
    path = _copy(tmp_path)
    _rewrite_tensors(path, lambda t: t.update({"model.layers.0.self_attn.extra_proj.weight": np.ones((4, 64), np.float32)}))
    with pytest.raises(CheckpointError, match="extra_proj.weight.*refusing to drop"):
        sx.load(path)


def test_shape_disagreeing_with_config(tmp_path):
    path = _copy(tmp_path)
    _edit_config(path, num_key_value_heads=4)
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' in .*model\.safetensors has shape \(48, 64\) but the config implies \(96, 64\)"):
        sx.load(path)


def test_layer_count_disagreeing_with_config(tmp_path):
    path = _copy(tmp_path)
    _edit_config(path, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match="config says 3 layers.*missing \\[2\\]"):
        sx.load(path)


def test_unknown_model_type(tmp_path):
    path = _copy(tmp_path)
    _edit_config(path, model_type="mamba")
    with pytest.raises(ConfigError, match="config.json: model_type 'mamba' is not supported"):
        sx.load(path)


def test_unknown_config_option_is_refused_unless_lenient(tmp_path):
    path = _copy(tmp_path)
    _edit_config(path, fused_qkv_layout="interleaved")
    with pytest.raises(ConfigError, match="'fused_qkv_layout' not understood for model_type 'llama'"):
        sx.load(path)
    model = sx.load(path, strict=False)
    assert model.meta["unknown_config_keys"] == ["fused_qkv_layout"]
    assert "fused_qkv_layout" not in model.meta["ignored_config_keys"]


def test_unsupported_option_value(tmp_path):
    path = _copy(tmp_path, "bert")
    _edit_config(path, position_embedding_type="relative_key")
    with pytest.raises(ConfigError, match="position_embedding_type='relative_key' is not supported for bert"):
        sx.load(path)


def test_missing_config_field(tmp_path):
    path = _copy(tmp_path)
    _edit_config(path, hidden_size=None)
    with pytest.raises(ConfigError, match="missing field 'hidden_size'"):
        sx.load(path)


def test_missing_config_file(tmp_path):
    path = _copy(tmp_path)
    (path / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json: missing"):
        sx.inspect(path)


def test_quantization_config_is_refused(tmp_path):
    path = _copy(tmp_path)
    _edit_config(path, quantization_config={"quant_method": "gptq", "bits": 4})
    with pytest.raises(UnsupportedCheckpointError, match="quantized checkpoint.*gptq"):
        sx.load(path)


@pytest.mark.parametrize("suffix,dtype", [("qweight", np.int32), ("weight_scale", np.float32)])
def test_quantized_packs_are_refused_by_name(tmp_path, suffix, dtype):
    path = _copy(tmp_path)
    _rewrite_tensors(path, lambda t: t.update({f"model.layers.0.self_attn.q_proj.{suffix}": np.zeros((8, 64), dtype)}))
    with pytest.raises(UnsupportedCheckpointError, match=f"q_proj.{suffix}.*quantized checkpoint"):
        sx.load(path)


def test_fp8_weights_are_refused(tmp_path):
    path = _copy(tmp_path)
    blob = (path / "model.safetensors").read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    entry = header["model.layers.0.self_attn.q_proj.weight"]
    entry.update(dtype="F8_E4M3", shape=[entry["shape"][0], 4 * entry["shape"][1]])  # same bytes, one per code
    new = json.dumps(header).encode()
    (path / "model.safetensors").write_bytes(len(new).to_bytes(8, "little") + new + blob[8 + n:])
    with pytest.raises(UnsupportedCheckpointError, match="F8_E4M3"):
        sx.load(path)


def test_pickle_only_directory_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "old"
    path.mkdir()
    shutil.copy(CHECKPOINTS / "llama" / "config.json", path)
    # Not a valid pickle at all: a loader that tried to unpickle it would fail differently.
    (path / "pytorch_model.bin").write_bytes(b"this would run code if unpickled")
    with pytest.raises(UnsupportedCheckpointError, match="(?s)only pickle files.*pytorch_model.bin.*never unpickles.*save_pretrained"):
        sx.load(path)


def test_missing_path():
    with pytest.raises(CheckpointError, match="no such file or directory"):
        sx.load("/nonexistent/checkpoint")


def test_nan_and_inf_weights_load_unchanged(tmp_path):
    """Non-finite weights are data for the analyses to report per head, not a loading error."""
    path = _copy(tmp_path)

    def poison(t):
        w = t["model.layers.1.self_attn.q_proj.weight"]
        w[0, 0], w[30, 1] = np.nan, np.inf

    _rewrite_tensors(path, poison)
    q = sx.load(path).params["layers"][0]["attn"]["q"]
    assert np.isnan(q[1, 0, 0, 0]) and np.isinf(q[1, 1, 6, 1])
    assert np.isfinite(q[0]).all()


def test_checkpoint_is_never_written(tmp_path):
    path = _copy(tmp_path, "llama_sharded")
    before = snapshot(path)
    for p in [path, *path.iterdir()]:
        os.chmod(p, stat.S_IREAD | stat.S_IEXEC if p.is_dir() else stat.S_IREAD)
    try:
        sx.inspect(path)
        sx.load(path)
        for _ in sx.stream_layers(path):
            pass
    finally:
        for p in [path, *path.iterdir()]:
            os.chmod(p, stat.S_IRWXU)
    assert snapshot(path) == before
    assert sorted(os.listdir(path)) == sorted(os.path.basename(k) for k in before)
