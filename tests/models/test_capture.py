"""Captured activations and their gradients: the same numbers as the forward pass and as
transformers, and gradients that match finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectrax as sx
from spectrax.models import Taps, activation_grads, capture, decoder_options, forward, zero_taps
from spectrax.models import apply_norm
from tests.conftest import CHECKPOINTS, REFERENCES

FAMILIES = ["llama", "qwen3", "gemma2", "gemma3_text", "olmo2", "phi3", "gpt2", "gpt_neox"]
ACTIVATION_REFERENCES = REFERENCES / "activations"


def next_token_loss(ids):
    def loss(logits):
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))
    return loss


@pytest.mark.parametrize("name", FAMILIES)
def test_capture_agrees_with_forward(name):
    model = sx.load(CHECKPOINTS / name)
    ids = np.random.default_rng(0).integers(0, 120, (2, 7))
    acts = capture(model.params, model.spec, ids)
    L, E, H = model.spec.num_layers, model.spec.hidden_size, model.spec.num_heads
    assert acts.hidden.shape == (L + 1, 2, 7, E) and acts.attention.shape == (L, 2, H, 7, 7)
    np.testing.assert_array_equal(np.asarray(acts.logits), np.asarray(forward(model.params, model.spec, ids)))
    # the last hidden state, normed and projected, is the logits
    options = decoder_options(model.spec)
    head = apply_norm(acts.hidden[-1], model.params["final_norm"], options) @ jnp.asarray(
        model.params["lm_head"]["weight"], jnp.float32).T
    if options.final_softcap is not None:
        head = options.final_softcap * jnp.tanh(head / options.final_softcap)
    np.testing.assert_allclose(np.asarray(head), np.asarray(acts.logits), atol=2e-5)
    probs = np.asarray(acts.attention)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(probs[..., np.triu_indices(7, 1)[0], np.triu_indices(7, 1)[1]] == 0)  # causal
    assert capture(model.params, model.spec, ids, attention=False).attention is None


@pytest.mark.parametrize("name", FAMILIES)
def test_hidden_states_and_attention_match_transformers(name):
    """`output_hidden_states` / `output_attentions` of the transformers model on the same ids."""
    ref = np.load(ACTIVATION_REFERENCES / f"{name}.npz")
    model = sx.load(CHECKPOINTS / name)
    acts = capture(model.params, model.spec, ref["input_ids"])
    # transformers' last hidden state is after the final norm; ours is the residual stream before it
    ours = np.array(acts.hidden)
    ours[-1] = np.asarray(apply_norm(acts.hidden[-1], model.params["final_norm"], decoder_options(model.spec)))
    np.testing.assert_allclose(ours, ref["hidden_states"], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(acts.attention), ref["attentions"], atol=2e-6)


@pytest.mark.parametrize("name", ["llama", "gpt_neox", "qwen2"])
def test_projections_match_transformers_layer0(name):
    """Layer 0's q/k/v as transformers hands them to attention (the fixture's second pass, with
    positions 0; layer 0's input does not depend on positions for rotary families)."""
    ref = np.load(REFERENCES / f"{name}.npz")
    model = sx.load(CHECKPOINTS / name)
    acts = capture(model.params, model.spec, ref["input_ids"], attention=False, projections=True)
    for field, key in (("q", "query"), ("k", "key"), ("v", "value")):
        ours = np.asarray(acts.projections[field][0]).transpose(0, 2, 1, 3)  # (B, heads, T, D)
        np.testing.assert_allclose(ours, ref[f"layer0.{key}"], atol=2e-5)
    assert acts.attention is None


def test_zero_taps_change_nothing_and_taps_act_where_they_are_put():
    model = sx.load(CHECKPOINTS / "gpt_neox")
    ids = np.array([[1, 5, 9, 2, 6]])
    taps = zero_taps(model.spec, 1, 5)
    plain = capture(model.params, model.spec, ids)
    tapped = capture(model.params, model.spec, ids, taps=taps)
    np.testing.assert_array_equal(np.asarray(plain.hidden), np.asarray(tapped.hidden))
    # after layer 0, position 3, one feature: a bump of every feature alike is what LayerNorm removes
    bump = taps.hidden.at[1, 0, 3, 0].set(1.0)
    moved = capture(model.params, model.spec, ids, taps=Taps(bump, taps.attention))
    np.testing.assert_array_equal(np.asarray(moved.hidden[:1]), np.asarray(plain.hidden[:1]))
    np.testing.assert_allclose(np.asarray(moved.hidden[1] - plain.hidden[1]), np.asarray(bump[1]), atol=1e-6)
    # causal: positions before 3 are untouched downstream, position 3 and later change
    np.testing.assert_array_equal(np.asarray(moved.logits[:, :3]), np.asarray(plain.logits[:, :3]))
    assert not np.allclose(np.asarray(moved.logits[:, 3:]), np.asarray(plain.logits[:, 3:]))
    with pytest.raises(ValueError, match="taps.attention"):
        capture(model.params, model.spec, ids, attention=False, taps=taps)
    with pytest.raises(ValueError, match="taps.projections"):
        capture(model.params, model.spec, ids, projections=True, taps=taps)


@pytest.mark.parametrize("name", ["gpt2", "qwen3"])
def test_activation_gradients_match_finite_differences(name):
    """d loss / d hidden[l] and d loss / d attention[l] against central differences, in float64."""
    model = sx.load(CHECKPOINTS / name)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 120, (2, 6)))
    loss_fn = next_token_loss(ids)
    with jax.enable_x64(True):
        loss, acts, grads = activation_grads(model.params, model.spec, ids, loss_fn, projections=True,
                                             dtype=jnp.float64)
        np.testing.assert_allclose(float(loss), float(loss_fn(acts.logits)), rtol=1e-12)
        taps = zero_taps(model.spec, 2, 6, projections=True, dtype=jnp.float64)
        rng = np.random.default_rng(2)

        def loss_at(t):
            return float(loss_fn(capture(model.params, model.spec, ids, taps=t, projections=True,
                                         dtype=jnp.float64).logits))

        eps = 1e-6
        for field in ("hidden", "attention"):
            base = getattr(taps, field)
            for layer in range(base.shape[0]):
                d = jnp.asarray(rng.standard_normal(base[layer].shape))
                plus = taps._replace(**{field: base.at[layer].add(eps * d)})
                minus = taps._replace(**{field: base.at[layer].add(-eps * d)})
                fd = (loss_at(plus) - loss_at(minus)) / (2 * eps)
                analytic = float(jnp.vdot(getattr(grads, field)[layer], d))
                assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (field, layer, fd, analytic)
        for field in ("q", "k", "v"):
            base = taps.projections[field]
            for layer in range(base.shape[0]):
                d = jnp.asarray(rng.standard_normal(base[layer].shape))
                bumped = {**taps.projections, field: base.at[layer].add(eps * d)}
                dipped = {**taps.projections, field: base.at[layer].add(-eps * d)}
                fd = (loss_at(taps._replace(projections=bumped)) - loss_at(taps._replace(projections=dipped))) / (2 * eps)
                analytic = float(jnp.vdot(grads.projections[field][layer], d))
                assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (field, layer, fd, analytic)
        # causal: the last position feeds no prediction of the loss, every earlier one does
        reach = np.abs(np.asarray(grads.hidden)).sum(-1)  # (L + 1, B, T)
        assert np.all(reach[..., :-1] > 0) and np.all(reach[..., -1] == 0)
        # d loss / d logits: softmax minus one-hot over the predicted positions, zero at the last
        np.testing.assert_array_equal(np.asarray(grads.logits[:, -1]), 0.0)
