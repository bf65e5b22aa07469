"""The JAX decoder against transformers' logits, its gradients against finite differences, and the shipped tiny-llama."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import spectrax as sx
from spectrax.data import TINY_LLAMA
from spectrax.io.config import parse_config
from spectrax.models import SUPPORTED_FAMILIES, forward, init_llama, merge_layer_ids, split_layer_ids
from tests.conftest import CHECKPOINTS, REFERENCES, fixture_names

DECODERS = [n for n in fixture_names() if n.removesuffix("_bf16").removesuffix("_sharded") in SUPPORTED_FAMILIES
            or n == "gemma3_multimodal"]


def test_required_families_are_covered():
    assert {"llama", "mistral", "qwen2", "qwen3", "llama_bf16"} <= set(DECODERS)


@pytest.mark.parametrize("name", DECODERS)
def test_logits_match_transformers(name):
    model = sx.load(CHECKPOINTS / name)
    ref = np.load(REFERENCES / f"{name}.npz")
    logits = forward(model.params, model.spec, ref["input_ids"])
    assert logits.dtype == jnp.float32
    assert logits.shape == ref["logits"].shape
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)


def test_causal():
    model = sx.load(CHECKPOINTS / "qwen3")
    ids = np.array([[5, 9, 17, 33, 2, 8]])
    changed = ids.copy()
    changed[0, 4:] = [100, 101]
    a, b = forward(model.params, model.spec, ids), forward(model.params, model.spec, changed)
    np.testing.assert_array_equal(np.asarray(a[:, :4]), np.asarray(b[:, :4]))
    assert not np.allclose(np.asarray(a[:, 4:]), np.asarray(b[:, 4:]))


def test_layer_order_follows_layer_ids():
    """Interleaved groups, or groups without layer_ids, run the layers in the same order."""
    model = sx.load(CHECKPOINTS / "gemma3_text")  # 3 layers, mixed rotary bases and windows in one group
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    expected = np.asarray(forward(model.params, model.spec, ids))
    (group,) = model.params["layers"]

    def pick(slots):
        sub = jax.tree.map(lambda a: a[np.asarray(slots)], {k: v for k, v in group.items() if k != "layer_ids"})
        return {"layer_ids": np.asarray(slots, np.int32), **sub}

    interleaved = {**model.params, "layers": (pick([1]), pick([0, 2]))}
    np.testing.assert_allclose(np.asarray(forward(interleaved, model.spec, ids)), expected, atol=1e-5)
    weights, _ = split_layer_ids({**model.params, "layers": (pick([0, 1]), pick([2]))})
    np.testing.assert_allclose(np.asarray(forward(weights, model.spec, ids)), expected, atol=1e-5)
    relabeled = (pick([0, 2]) | {"layer_ids": np.array([0, 1], np.int32)}, pick([1]) | {"layer_ids": np.array([2], np.int32)})
    swapped = {**model.params, "layers": relabeled}  # layers 1 and 2 exchanged
    assert not np.allclose(np.asarray(forward(swapped, model.spec, ids)), expected, atol=1e-3)
    with pytest.raises(ValueError, match="not the layers"):
        forward({**model.params, "layers": (pick([0, 1]),)}, model.spec, ids)


def test_traced_layer_ids_are_refused():
    model = sx.load(CHECKPOINTS / "llama")
    with pytest.raises(TypeError, match="layer_ids must be concrete"):
        jax.jit(lambda p: forward(p, model.spec, jnp.zeros((1, 3), jnp.int32)))(model.params)


def test_refuses_what_it_does_not_implement():
    with pytest.raises(sx.UnsupportedCheckpointError, match="no forward pass"):
        model = sx.load(CHECKPOINTS / "bloom")  # ALiBi attention
        forward(model.params, model.spec, np.zeros((1, 2), np.int32))
    gpt2 = sx.load(CHECKPOINTS / "gpt2")
    for key in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        with pytest.raises(sx.UnsupportedCheckpointError, match=key):
            forward(gpt2.params, dataclasses.replace(gpt2.spec, config={**gpt2.spec.config, key: True}),
                    np.zeros((1, 2), np.int32))
    with pytest.raises(ValueError, match="65 tokens per sequence but only 64 learned positions"):
        forward(gpt2.params, gpt2.spec, np.zeros((1, 65), np.int32))
    model = sx.load(CHECKPOINTS / "llama")
    scaled = {**model.spec.config, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}
    with pytest.raises(sx.UnsupportedCheckpointError, match="llama3"):
        forward(model.params, dataclasses.replace(model.spec, config=scaled), np.zeros((1, 2), np.int32))


def test_rope_theta_is_read_from_old_and_new_configs():
    model = sx.load(CHECKPOINTS / "llama")
    ids = np.array([[1, 2, 3, 4, 5, 6, 7]])
    old = {k: v for k, v in model.spec.config.items() if k != "rope_parameters"}
    base = np.asarray(forward(model.params, model.spec, ids))
    same = forward(model.params, dataclasses.replace(model.spec, config={**old, "rope_theta": 10000.0}), ids)
    default = forward(model.params, dataclasses.replace(model.spec, config=old), ids)
    other = forward(model.params, dataclasses.replace(model.spec, config={**old, "rope_theta": 50.0}), ids)
    np.testing.assert_allclose(np.asarray(same), base, atol=1e-6)
    np.testing.assert_allclose(np.asarray(default), base, atol=1e-6)
    assert not np.allclose(np.asarray(other), base, atol=1e-3)


def test_gpt_neox_old_config_keys_and_sequential_residual():
    """Pre-transformers-5 configs name the rotary settings `rotary_pct`/`rotary_emb_base`;
    `use_parallel_residual=false` runs attention then MLP."""
    model = sx.load(CHECKPOINTS / "gpt_neox")
    ids = np.array([[3, 1, 4, 1, 5, 9, 2]])
    base = np.asarray(forward(model.params, model.spec, ids))
    old = {k: v for k, v in model.spec.config.items() if k != "rope_parameters"}
    same = forward(model.params, dataclasses.replace(model.spec, config={**old, "rotary_pct": 0.25,
                                                                             "rotary_emb_base": 10000.0}), ids)
    np.testing.assert_allclose(np.asarray(same), base, atol=1e-6)
    full = forward(model.params, dataclasses.replace(model.spec, config={**old, "rotary_pct": 1.0}), ids)
    assert not np.allclose(np.asarray(full), base, atol=1e-3)
    sequential = forward(model.params, dataclasses.replace(
        model.spec, config={**model.spec.config, "use_parallel_residual": False}), ids)
    assert not np.allclose(np.asarray(sequential), base, atol=1e-3)


def _tiny_spec(**overrides):
    config = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 32, "vocab_size": 32,
              "rms_norm_eps": 1e-6, "tie_word_embeddings": False, **overrides}
    return parse_config(config)


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
@pytest.mark.slow
def test_gradients_match_finite_differences(model_type):
    """Directional derivatives of the next-token loss, float64 autodiff vs central differences."""
    with jax.enable_x64(True):
        spec = _tiny_spec(model_type=model_type)
        params = init_llama(jax.random.key(0), spec, std=0.3, dtype=jnp.float64)
        weights, layer_ids = split_layer_ids(params)
        ids = jax.random.randint(jax.random.key(1), (2, 7), 0, spec.vocab_size)

        @jax.jit
        def loss(w):
            logits = forward(merge_layer_ids(w, layer_ids), spec, ids, dtype=jnp.float64)
            return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

        grads = jax.grad(loss)(weights)
        paths = [("layers", 0, "attn", "q"), ("layers", 0, "attn", "k"), ("layers", 0, "attn", "v"),
                 ("layers", 0, "attn", "o"), ("layers", 0, "mlp", "gate"), ("layers", 0, "mlp", "down"),
                 ("layers", 0, "norms", "attn_norm", "scale"), ("embed", "tokens"), ("lm_head", "weight"),
                 ("final_norm", "scale")]
        if model_type == "qwen3":
            paths.append(("layers", 0, "attn", "q_norm"))
        for i, path in enumerate(paths):
            leaf, grad = _get(weights, path), _get(grads, path)
            direction = jax.random.normal(jax.random.key(100 + i), leaf.shape, jnp.float64)
            eps = 1e-5
            plus, minus = (loss(_set(weights, path, leaf + s * eps * direction)) for s in (1, -1))
            numeric = (plus - minus) / (2 * eps)
            analytic = jnp.vdot(grad, direction)
            np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6, atol=1e-9, err_msg=str(path))
            assert abs(float(analytic)) > 1e-6, path  # the test would pass vacuously on a dead weight


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    if not path:
        return value
    head, *rest = path
    if isinstance(tree, tuple):
        return tuple(_set(t, rest, value) if i == head else t for i, t in enumerate(tree))
    return {**tree, head: _set(tree[head], rest, value)}


# ----------------------------------------------------------------------------------------------
# The checkpoint trained by experiments/train_embedded.py.


def _copy_batch(rng, batch, n=16, vocab=64):
    """The task documented in TRAINING.md: [BOS=0, x_1..x_n, SEP=1, x_1..x_n], x_i uniform in 2..vocab-1."""
    x = rng.integers(2, vocab, size=(batch, n))
    return np.concatenate([np.zeros((batch, 1), int), x, np.ones((batch, 1), int), x], axis=1)


def test_tiny_llama_checkpoint_solves_its_task():
    config = json.loads((TINY_LLAMA / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is False and config["dtype"] == "bfloat16"
    assert sum(p.stat().st_size for p in TINY_LLAMA.iterdir()) < 1_000_000
    model = sx.load(TINY_LLAMA)
    assert model.meta["source_dtypes"] == ["BF16"]
    spec = model.spec
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim,
            spec.intermediate_size, spec.vocab_size) == (64, 4, 4, 2, 16, 128, 64)
    ids = _copy_batch(np.random.default_rng(12345), 256)
    logits = forward(model.params, spec, ids)
    pred, target = logits[:, 17:-1], ids[:, 18:]
    loss = float(optax.softmax_cross_entropy_with_integer_labels(pred, target).mean())
    accuracy = float((np.asarray(jnp.argmax(pred, -1)) == target).mean())
    assert loss < 0.05 < math.log(64)
    assert accuracy > 0.99
    # The random first half stays unpredictable: the model did not memorize sequences.
    first = float(optax.softmax_cross_entropy_with_integer_labels(logits[:, 1:16], ids[:, 2:17]).mean())
    assert first > math.log(62) - 0.3
