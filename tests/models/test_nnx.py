"""`spectrax.models.nnx.Decoder`: its state is the converted pytree (the same arrays), its logits are
the pure forward pass's (and transformers'), a tied head is one parameter, and training works."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import spectrax as sx
from spectrax.models import forward
from spectrax.models.nnx import Decoder
from tests.conftest import CHECKPOINTS, REFERENCES
from tests.models.test_decoder import DECODERS


def _params(decoder):
    return jax.tree.leaves(decoder.model, is_leaf=lambda x: isinstance(x, nnx.Variable))


@pytest.mark.parametrize("name", DECODERS)
def test_state_is_the_loaded_arrays_and_logits_are_the_forward_pass(name):
    model = sx.load(CHECKPOINTS / name)
    decoder = Decoder(model)
    params = _params(decoder)
    assert all(isinstance(p, nnx.Param) for p in params)
    assert len(params) == len(jax.tree.leaves(model))
    for param, leaf in zip(params, jax.tree.leaves(model)):
        assert param.get_value() is leaf  # wrapped, not copied
    state = nnx.state(decoder, nnx.Param)
    assert all(a is b for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(model)))
    ref = np.load(REFERENCES / f"{name}.npz")
    logits = decoder(ref["input_ids"])
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(forward(model.params, model.spec, ref["input_ids"])))
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)


def test_device_arrays_are_held_without_a_copy():
    model = sx.load(CHECKPOINTS / "llama", device=True)
    decoder = Decoder(model)
    for param, leaf in zip(_params(decoder), jax.tree.leaves(model)):
        assert param.get_value().unsafe_buffer_pointer() == leaf.unsafe_buffer_pointer()
    back = decoder.arrays()
    assert back.spec == model.spec and back.params["embed"]["tokens"] is model.params["embed"]["tokens"]
    np.testing.assert_array_equal(back.params["layers"][0]["layer_ids"], model.params["layers"][0]["layer_ids"])


def test_tied_head_is_one_parameter_through_training_and_jit_follows_the_config():
    model = jax.tree.map(jnp.asarray, sx.load(CHECKPOINTS / "gemma"))
    decoder = Decoder(model)
    head, tokens = decoder.model.params["lm_head"]["weight"], decoder.model.params["embed"]["tokens"]
    assert head is tokens
    ids = np.array([[2, 7, 1, 8, 2, 8]])
    opt = nnx.Optimizer(decoder, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(decoder, opt):
        logits_loss = lambda d: optax.softmax_cross_entropy_with_integer_labels(d(ids)[:, :-1], ids[:, 1:]).mean()  # noqa: E731
        value, grads = nnx.value_and_grad(logits_loss)(decoder)
        opt.update(decoder, grads)
        return value

    first, second = float(step(decoder, opt)), float(step(decoder, opt))
    assert second < first
    after = decoder.arrays()
    assert after.params["lm_head"]["weight"] is after.params["embed"]["tokens"]  # still one array
    assert not np.allclose(np.asarray(after.params["embed"]["tokens"]), np.asarray(model.params["embed"]["tokens"]))
    logits = nnx.jit(lambda d: d(ids))
    np.testing.assert_allclose(np.asarray(logits(decoder)), np.asarray(forward(after.params, after.spec, ids)), atol=1e-5)
    # the spec's config is part of the module's static structure: another rotary base is another program
    config = {**model.spec.config, "rope_parameters": {"rope_theta": 50.0, "rope_type": "default"}}
    other = dataclasses.replace(after, spec=dataclasses.replace(after.spec, config=config))
    assert other.spec == after.spec  # ModelSpec equality leaves the config out
    expected = np.asarray(forward(other.params, other.spec, ids))
    assert not np.allclose(expected, np.asarray(logits(decoder)), atol=1e-3)
    np.testing.assert_allclose(np.asarray(logits(Decoder(other))), expected, atol=1e-5)


def test_capture_is_the_pure_capture():
    model = sx.load(CHECKPOINTS / "qwen3")
    ids = np.array([[5, 9, 17, 33]])
    acts, expected = Decoder(model).capture(ids, attention=True), sx.models.capture(model.params, model.spec, ids)
    for a, b in zip(jax.tree.leaves(acts), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unsupported_families_are_refused_when_built():
    with pytest.raises(sx.UnsupportedCheckpointError, match="no forward pass for model_type 'bloom'"):
        Decoder(sx.load(CHECKPOINTS / "bloom"))
