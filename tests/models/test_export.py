"""Canonical -> Hugging Face export is the exact inverse of the llama adapter."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

import spectrax as sx
from spectrax.io.config import parse_config
from spectrax.models import forward, init_llama, save_hf_checkpoint, to_hf_llama
from tests.conftest import CHECKPOINTS

# untied + head, tied + q/k/v biases, per-head q/k norms, gemma2 pre+post norms, olmo2 post norms + projection q/k norms
ROUND_TRIP = ["llama", "llama_bf16", "llama_sharded", "mistral", "qwen2", "qwen3", "gemma2", "olmo2"]


def _assert_trees_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_export_reproduces_the_stored_tensors(name):
    model = sx.load(CHECKPOINTS / name)
    exported = to_hf_llama(model.params, model.spec)
    stored = {}
    for file in sorted((CHECKPOINTS / name).glob("*.safetensors")):
        stored.update(load_file(file))
    assert exported.keys() == stored.keys()
    for key, value in stored.items():
        assert exported[key].dtype == value.dtype, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_export_then_load_round_trip(name, tmp_path):
    model = sx.load(CHECKPOINTS / name)
    out = save_hf_checkpoint(tmp_path / "ckpt", model.params, model.spec)
    again = sx.load(out)
    _assert_trees_identical(model.params, again.params)
    assert again.spec == model.spec
    assert again.meta["transformations"] == model.meta["transformations"]


def _bf16(x):
    x = np.asarray(x)
    return x.astype(ml_dtypes.bfloat16) if np.issubdtype(x.dtype, np.floating) else x


def test_trained_style_model_round_trips_in_bf16(tmp_path):
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32,
              "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
              "intermediate_size": 48, "vocab_size": 40, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "dtype": "bfloat16"}
    spec = parse_config(config)
    params = jax.device_get(init_llama(jax.random.key(0), spec, std=0.2))
    save_hf_checkpoint(tmp_path / "m", params, spec, dtype=ml_dtypes.bfloat16, config=config,
                       extra_files={"NOTE.md": "hi\n"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["NOTE.md", "config.json", "model.safetensors"]
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == config
    names = load_file(tmp_path / "m" / "model.safetensors").keys()
    assert "model.layers.2.self_attn.q_proj.weight" in names and "lm_head.weight" in names
    loaded = sx.load(tmp_path / "m")
    _assert_trees_identical(loaded.params, jax.tree.map(_bf16, params))
    ids = np.array([[1, 2, 3, 4, 5]])
    np.testing.assert_allclose(np.asarray(forward(loaded.params, loaded.spec, ids)),
                               np.asarray(forward(params, spec, ids)), atol=0.05)
    assert not list(tmp_path.glob(".tmp-*"))  # written atomically, nothing left behind


def test_refuses_to_overwrite_or_drop(tmp_path):
    model = sx.load(CHECKPOINTS / "llama")
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileExistsError, match="force"):
        save_hf_checkpoint(tmp_path / "ckpt", model.params, model.spec)
    save_hf_checkpoint(tmp_path / "ckpt", model.params, model.spec, force=True)
    _assert_trees_identical(sx.load(tmp_path / "ckpt").params, model.params)

    (group,) = model.params["layers"]
    extra = {**model.params, "layers": ({**group, "attn": {**group["attn"], "sinks": group["attn"]["q_bias"]
                                                          if "q_bias" in group["attn"] else np.zeros((2, 4))}},)}
    with pytest.raises(ValueError, match="sinks"):
        to_hf_llama(extra, model.spec)
    tied = sx.load(CHECKPOINTS / "qwen2")
    untied_head = {**tied.params, "lm_head": {"weight": tied.params["lm_head"]["weight"] + np.float32(1)}}
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        to_hf_llama(untied_head, tied.spec)
    with pytest.raises(ValueError, match="gpt2"):
        gpt2 = sx.load(CHECKPOINTS / "gpt2")
        to_hf_llama(gpt2.params, gpt2.spec)


def test_export_accepts_jax_arrays():
    model = sx.load(CHECKPOINTS / "qwen3")
    on_device = jax.tree.map(jnp.asarray, model.params)
    a, b = to_hf_llama(on_device, model.spec), to_hf_llama(model.params, model.spec)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
