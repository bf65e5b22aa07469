"""Every family's canonical per-head q/k/v/o reproduces the projections `transformers` computed.

The references (tests/fixtures/references/*.npz, made by tests/fixtures/make_fixtures.py) hold,
for every layer, the attention input, the query/key/value states each module handed to its
attention function (positions 0, so rotary is the identity; before GQA repetition), and the
input/output of the output projection.
"""

import json

import jax
import numpy as np
import pytest

import spectrax as sx
from tests.conftest import CHECKPOINTS, REFERENCES, fixture_names

TOL = dict(rtol=1e-4, atol=1e-4)


def _rms_norm(x: np.ndarray, scale: np.ndarray, eps: float, offset: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (offset + scale)


def _project(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """x (B, T, E), w (heads, D, E) -> (B, heads, T, D)."""
    out = np.einsum("bte,hde->bhtd", x, w)
    return out if bias is None else out + bias[None, :, None, :]


def _qk_norm(states: np.ndarray, scale: np.ndarray | None, spec: sx.ModelSpec) -> np.ndarray:
    if scale is None:
        return states
    if spec.qk_norm == "head":
        return _rms_norm(states, scale, spec.norm_eps, spec.norm_offset)
    # "projection" (OLMo-2): one norm over all heads of a token, before the head split.
    B, heads, T, D = states.shape
    flat = states.transpose(0, 2, 1, 3).reshape(B, T, heads * D)
    flat = _rms_norm(flat, scale, spec.norm_eps, spec.norm_offset)
    return flat.reshape(B, T, heads, D).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("name", fixture_names())
def test_per_head_projections_match_transformers(name):
    model = sx.load(CHECKPOINTS / name)
    ref = np.load(REFERENCES / f"{name}.npz")
    spec = model.spec
    assert int(ref["num_layers"]) == spec.num_layers
    assert (int(ref["num_heads"]), int(ref["num_kv_heads"]), int(ref["head_dim"])) == (
        spec.num_heads, spec.num_kv_heads, spec.head_dim)
    (group,) = model.params["layers"]
    attn = {k: np.asarray(v, np.float32) for k, v in group["attn"].items()}
    for layer in range(spec.num_layers):
        x = ref[f"layer{layer}.attn_in"]
        for part in ("q", "k", "v"):
            bias = attn[f"{part}_bias"][layer] if f"{part}_bias" in attn else None
            states = _project(x, attn[part][layer], bias)
            if part != "v":
                states = _qk_norm(states, attn[f"{part}_norm"][layer] if f"{part}_norm" in attn else None, spec)
            expected = ref[f"layer{layer}.{ {'q': 'query', 'k': 'key', 'v': 'value'}[part] }"]
            np.testing.assert_allclose(states, expected, **TOL, err_msg=f"{name} layer {layer} {part}")
        B, T, _ = x.shape
        heads_in = ref[f"layer{layer}.o_in"].reshape(B, T, spec.num_heads, spec.head_dim)
        out = np.einsum("bthd,hde->bte", heads_in, attn["o"][layer])
        if "o_bias" in attn:
            out = out + attn["o_bias"][layer]
        np.testing.assert_allclose(out, ref[f"layer{layer}.o_out"], **TOL, err_msg=f"{name} layer {layer} o")


@pytest.mark.parametrize("name", fixture_names())
def test_source_dtype_is_kept(name):
    model = sx.load(CHECKPOINTS / name)
    config = json.loads((CHECKPOINTS / name / "config.json").read_text())
    stored = config.get("dtype") or config.get("text_config", {}).get("dtype") or "float32"
    for leaf in jax.tree.leaves(model.params["layers"][0]["attn"]):
        assert str(leaf.dtype) == stored
    assert model.meta["source_dtypes"] == [{"float32": "F32", "bfloat16": "BF16"}[stored]]


def test_gqa_map_pairs_query_heads_with_their_kv_head():
    """o_in at t=0 is value[h // (H // KV)] (softmax over one key): the pairing the kernels use."""
    model = sx.load(CHECKPOINTS / "llama")
    ref = np.load(REFERENCES / "llama.npz")
    spec = model.spec
    v = np.asarray(model.params["layers"][0]["attn"]["v"][0], np.float32)
    values = _project(ref["layer0.attn_in"], v, None)  # (B, KV, T, D)
    o_in = ref["layer0.o_in"].reshape(2, 5, spec.num_heads, spec.head_dim)
    for h in range(spec.num_heads):
        np.testing.assert_allclose(o_in[:, 0, h], values[:, h // spec.group_size, 0], **TOL)


def test_sharded_equals_single_file():
    a = sx.load(CHECKPOINTS / "llama_sharded").params
    b = sx.load(CHECKPOINTS / "llama_bf16").params
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_tied_head_is_aliased_not_copied():
    model = sx.load(CHECKPOINTS / "qwen2")
    assert model.params["lm_head"]["weight"] is model.params["embed"]["tokens"]
    assert any("tied" in note for note in model.meta["transformations"])
    untied = sx.load(CHECKPOINTS / "gpt_neox")
    assert untied.params["lm_head"]["weight"] is not untied.params["embed"]["tokens"]


def test_multimodal_checkpoint_analyzes_the_language_tower():
    model = sx.load(CHECKPOINTS / "gemma3_multimodal")
    text = sx.load(CHECKPOINTS / "gemma3_text")
    assert model.spec.model_type == "gemma3_text" and model.spec.wrapper == "gemma3"
    assert model.meta["tower"] == "language_model.model."
    assert model.meta["other_towers"] == ["vision_tower.encoder."]
    assert model.params["layers"][0]["attn"]["q"].shape == text.params["layers"][0]["attn"]["q"].shape
    with pytest.raises(sx.CheckpointError, match="tower"):
        sx.load(CHECKPOINTS / "gemma3_multimodal", tower="nonexistent.")


def _interleaved_copy(tmp_path):
    """The llama fixture stored the way a rope_interleaved=true checkpoint stores it: within each
    q/k head, half-split feature i moved to row 2i and feature D/2 + i to row 2i + 1."""
    import shutil

    from safetensors.numpy import load_file, save_file

    path = tmp_path / "interleaved"
    shutil.copytree(CHECKPOINTS / "llama", path)
    config = json.loads((path / "config.json").read_text())
    D = config["head_dim"]
    tensors = load_file(path / "model.safetensors")
    for name, w in tensors.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = w.shape[0] // D
            tensors[name] = w.reshape(heads, 2, D // 2, -1).swapaxes(1, 2).reshape(w.shape)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({**config, "rope_interleaved": True}))
    return path, tensors, config


def test_rope_interleaved_checkpoint_converts_to_the_half_split_tree(tmp_path):
    path, _, _ = _interleaved_copy(tmp_path)
    interleaved, original = sx.load(path), sx.load(CHECKPOINTS / "llama")
    assert interleaved.spec.rope_interleaved and not original.spec.rope_interleaved
    jax.tree.map(np.testing.assert_array_equal, interleaved.params, original.params)


def test_rope_interleaved_scores_match_pairwise_rotary_in_numpy(tmp_path):
    """Independent reference: rotate stored q/k features in adjacent pairs (2i, 2i+1) by angle
    t * theta^(-2i/D) (the GPT-J / nanotron rule) and take q.k; spectrax's rotary on the converted
    tree must give the same attention scores."""
    from spectrax.models.layers import apply_rope, rope_tables

    path, stored, config = _interleaved_copy(tmp_path)
    D, H, KV = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]
    theta, T = config["rope_parameters"]["rope_theta"], 7
    x = np.random.default_rng(0).standard_normal((T, config["hidden_size"]))

    def pairwise(states):  # (T, heads, D), features rotating in pairs (2i, 2i+1)
        angle = np.arange(T)[:, None] * theta ** (-np.arange(0, D, 2) / D)[None, :]
        even, odd = states[..., 0::2], states[..., 1::2]
        cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
        out = np.empty_like(states)
        out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, odd * cos + even * sin
        return out

    p = "model.layers.0.self_attn."
    q = pairwise((x @ stored[p + "q_proj.weight"].astype(np.float64).T).reshape(T, H, D))
    k = pairwise((x @ stored[p + "k_proj.weight"].astype(np.float64).T).reshape(T, KV, D))
    reference = np.einsum("thd,shd->hts", q, np.repeat(k, H // KV, axis=1))

    attn = jax.tree.map(lambda a: np.asarray(a[0], np.float64), sx.load(path).params["layers"][0]["attn"])
    cos, sin = (np.asarray(a, np.float64) for a in rope_tables(theta, D, T))
    qc = np.asarray(apply_rope(np.einsum("te,hde->thd", x, attn["q"])[None], cos, sin)[0])
    kc = np.asarray(apply_rope(np.einsum("te,hde->thd", x, attn["k"])[None], cos, sin)[0])
    scores = np.einsum("thd,shd->hts", qc, np.repeat(kc, H // KV, axis=1))
    np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-5)
    # Reading the stored rows as if they were half-split would not reproduce it.
    naive = np.einsum("thd,shd->hts", *(np.asarray(apply_rope(s[None], cos, sin)[0]) for s in (
        (x @ stored[p + "q_proj.weight"].astype(np.float64).T).reshape(T, H, D),
        np.repeat((x @ stored[p + "k_proj.weight"].astype(np.float64).T).reshape(T, KV, D), H // KV, axis=1))))
    assert not np.allclose(naive, reference, atol=1e-3)
