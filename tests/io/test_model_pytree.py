"""`sx.Model` is a pytree: its leaves are the weights; spec, metadata, layer order and head tying are structure."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import spectrax as sx
from spectrax.models import forward
from tests.conftest import CHECKPOINTS


def test_leaves_are_the_weights_and_a_map_keeps_the_structure():
    model = sx.load(CHECKPOINTS / "llama_bf16")
    leaves = jax.tree.leaves(model)
    assert all(np.issubdtype(leaf.dtype, np.floating) or leaf.dtype == jnp.bfloat16 for leaf in leaves)
    assert len(leaves) == len(jax.tree.leaves(model.params)) - len(model.params["layers"])  # no layer_ids
    assert any(leaf is model.params["layers"][0]["attn"]["q"] for leaf in leaves)  # leaves are the arrays
    f32 = jax.tree.map(lambda a: a.astype(np.float32), model)
    assert isinstance(f32, sx.Model) and f32.spec == model.spec and f32.meta is model.meta
    assert f32.params["layers"][0]["attn"]["q"].dtype == np.float32
    np.testing.assert_array_equal(f32.params["layers"][0]["layer_ids"], model.params["layers"][0]["layer_ids"])
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(model)[0]]
    assert ".params['layers'][0]['attn']['q']" in paths


def test_a_tied_head_is_one_leaf_and_stays_tied():
    model = sx.load(CHECKPOINTS / "gemma")
    assert model.params["lm_head"]["weight"] is model.params["embed"]["tokens"]
    tokens = [leaf for leaf in jax.tree.leaves(model) if leaf is model.params["embed"]["tokens"]]
    assert len(tokens) == 1
    moved = jax.device_put(model)
    assert moved.params["lm_head"]["weight"] is moved.params["embed"]["tokens"]
    assert isinstance(moved.params["embed"]["tokens"], jax.Array)


def test_jit_and_grad_take_a_model_and_retrace_for_another_config():
    model = sx.load(CHECKPOINTS / "qwen3")
    ids = np.array([[1, 2, 3, 4]])
    logits = jax.jit(lambda m, i: forward(m.params, m.spec, i))
    base = logits(model, ids)
    np.testing.assert_allclose(np.asarray(base), np.asarray(forward(model.params, model.spec, ids)), atol=1e-6)
    # ModelSpec equality leaves the raw config out; the pytree structure does not, so no stale program
    config = {**model.spec.config, "rope_parameters": {"rope_theta": 50.0, "rope_type": "default"}}
    other = dataclasses.replace(model, spec=dataclasses.replace(model.spec, config=config))
    assert other.spec == model.spec
    assert not np.allclose(np.asarray(logits(other, ids)), np.asarray(base), atol=1e-3)
    grads = jax.grad(lambda m: logits(m, ids).sum())(jax.tree.map(jnp.asarray, model))
    assert isinstance(grads, sx.Model)
    assert grads.params["layers"][0]["attn"]["q"].shape == model.params["layers"][0]["attn"]["q"].shape
