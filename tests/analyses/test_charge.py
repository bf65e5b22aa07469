"""The attention symmetry's charge: the balanced point, the laws there, and the charge's dynamics
under gradient descent with and without weight decay (docs/statistics.md §6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectrax as sx
from spectrax import spectral as sp
from spectrax.analyses import charge, gauge
from spectrax.dynamics import symmetry
from spectrax.models.layers import apply_rope, rope_tables
from tests.conftest import CHECKPOINTS

KEY = jax.random.key(0)


def _heads(seed, H, KV, D, E, k_scale=0.3):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((H, D, E))
    k = k_scale * rng.standard_normal((KV, D, E)) * np.linspace(1.0, 0.2, D)[:, None]  # another spectral shape
    return q, k


def _scores(q, k, R, x):
    """Rotary attention scores `(H, T, T)` of inputs x `(T, E)`, GQA as the decoder does it."""
    T = x.shape[0]
    cos, sin = rope_tables(10000.0, R, T, jnp.float64)
    qs = apply_rope(jnp.einsum("te,hde->thd", x, q)[None], cos, sin)[0]
    ks = apply_rope(jnp.einsum("te,hde->thd", x, k)[None], cos, sin)[0]
    return jnp.einsum("thd,shd->hts", qs, jnp.repeat(ks, q.shape[0] // k.shape[0], axis=1))


@pytest.mark.parametrize("R,H,KV", [(0, 3, 3), (0, 4, 2), (4, 4, 2), (8, 3, 3)])
def test_balance_keeps_the_logits_and_zeroes_the_charge(R, H, KV):
    with jax.enable_x64(True):
        q, k = _heads(1, H, KV, 8, 16)
        qb, kb = charge.balance(q, k, R)
        x = np.random.default_rng(2).standard_normal((6, 16))
        np.testing.assert_allclose(_scores(qb, kb, R, x), _scores(q, k, R, x), atol=1e-11)
        before, scale = charge.group_charge(q, k, R)
        after, _ = charge.group_charge(qb, kb, R)
        assert np.abs(before).max() > 0.5 * np.abs(scale).max()
        np.testing.assert_allclose(after, 0.0, atol=1e-12 * np.abs(scale).max())


def test_balanced_heads_obey_the_first_laws_exactly():
    """One query head per group, no RoPE: identical Q and K spectra at the balanced point."""
    with jax.enable_x64(True):
        q, k = _heads(3, 3, 3, 8, 16)
        stats = charge.charge_statistics(q, k, k[::-1], q[::-1], rotary_dim=0)
        np.testing.assert_allclose(stats["pearson_qk_balanced"], 1.0, atol=1e-12)
        np.testing.assert_allclose(stats["ssr_qk_balanced"], 0.0, atol=1e-12)
        np.testing.assert_allclose(stats["alpha_qk_balanced"], 1.0, atol=1e-12)
        np.testing.assert_allclose(stats["cos_u_qk_balanced"], 1.0, atol=1e-12)
        assert np.all(stats["pearson_qk"] < 0.99) and np.all(stats["ssr_qk"] > 1e-2)
        # with GQA the group's stacked query matrix, not each head, takes K's spectrum
        q, k = _heads(4, 4, 2, 8, 16)
        qb, kb = charge.balance(q, k, 0)
        stacked = np.concatenate([qb[0], qb[1]], axis=-1), np.concatenate([qb[2], qb[3]], axis=-1)
        for g in range(2):
            np.testing.assert_allclose(np.linalg.svd(stacked[g], compute_uv=False),
                                       np.linalg.svd(kb[g], compute_uv=False), rtol=1e-10)


def test_commutant_is_the_projection_onto_what_commutes_with_rope():
    rng = np.random.default_rng(5)
    m = rng.standard_normal((8, 8))
    m = m + m.T
    p = np.asarray(charge.commutant(m, 6))
    np.testing.assert_allclose(np.asarray(charge.commutant(p, 6)), p)  # idempotent
    angle = np.array([0.3, 1.1, 2.0])
    rotation = np.eye(8)  # RoPE's rotation at one position: pairs (i, i + 3), features 6, 7 pass through
    rotation[[0, 1, 2], [0, 1, 2]] = rotation[[3, 4, 5], [3, 4, 5]] = np.cos(angle)
    rotation[[0, 1, 2], [3, 4, 5]], rotation[[3, 4, 5], [0, 1, 2]] = -np.sin(angle), np.sin(angle)
    np.testing.assert_allclose(rotation @ p, p @ rotation, atol=1e-12)
    np.testing.assert_allclose(np.sum((m - p) * p), 0.0, atol=1e-5)  # orthogonal projection
    np.testing.assert_allclose(np.asarray(charge.commutant(m, 0)), m, rtol=1e-6)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_balanced_statistics_are_gauge_invariant(name):
    model = sx.load(CHECKPOINTS / name)
    moved = gauge.reparametrize(model.params, model.spec, KEY, spread=0.7)
    attn, attn_moved = (jax.tree.map(lambda a: np.asarray(a[0], np.float64), p["layers"][0]["attn"])
                        for p in (model.params, moved))
    R = gauge.rotary_dim(model.spec, attn["q"].shape[1])
    with jax.enable_x64(True):
        before, after = (charge.charge_statistics(*(a[m] for m in "qkvo"), rotary_dim=R) for a in (attn, attn_moved))
    for name in charge.BALANCED_STATISTICS:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-7, err_msg=name)
    for name in ("qk_charge", "ov_charge", "pearson_qk"):  # the parametrization's own properties move
        assert np.abs(after[name] - before[name]).max() > 1e-3, name


def test_charge_layer_columns_and_one_compile():
    model = sx.load(CHECKPOINTS / "llama")
    attn = jax.tree.map(lambda a: np.asarray(a[0]), model.params["layers"][0]["attn"])
    R = gauge.rotary_dim(model.spec, attn["q"].shape[1])
    cols = charge.charge_layer(attn, KEY, rotary_dim=R, num_draws=4)
    compiled = charge.charge_statistics._cache_size()
    again = charge.charge_layer(attn, jax.random.key(1), rotary_dim=R, num_draws=4)
    assert charge.charge_statistics._cache_size() == compiled
    np.testing.assert_array_equal(cols["qk_charge"], again["qk_charge"])
    assert all(cols[c].shape == (4,) for c in cols)
    np.testing.assert_array_equal(cols["qk_charge"][0], cols["qk_charge"][1])  # heads 0, 1 share a group
    assert np.all((cols["qk_charge"] >= 0) & (cols["qk_charge"] <= 1))
    counterparts = {c for c in gauge.COUNTERPARTS.values() if c is not None}
    assert counterparts == set(charge.BALANCED_STATISTICS) <= set(cols)
    for law, claim in (("pearson_qk", 1.0), ("ssr_qk", 0.0)):
        raw = np.abs(np.asarray(charge.charge_statistics(*(attn[m] for m in "qkvo"), rotary_dim=R)[law]) - claim)
        expected = (raw - np.abs(cols[f"{law}_balanced"] - claim)) / raw
        np.testing.assert_allclose(cols[f"{law}_charge_share"], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="rotary dimension 5"):
        charge.charge_layer(attn, KEY, rotary_dim=5, num_draws=4)


# ----------------------------------------------------------------------------- dynamics

# Toy: the attention logit of a query x_a and a key x_b at relative position delta,
# (R_delta W_Q,h x_a) . (W_K,g x_b), regressed on a teacher's logits by full-batch GD with coupled
# weight decay (spectrax.dynamics.symmetry.train). Its loss has the gauge symmetry of the real model.
E, D, N, T = 12, 4, 256, 8


def _logits(params, x, R):
    xa, xb, delta = x
    cos, sin = rope_tables(10000.0, R, T, xa.dtype)
    H, KV = params["q"].shape[0], params["k"].shape[0]
    qs = apply_rope(jnp.einsum("ne,hde->nhd", xa, params["q"])[None], cos[delta], sin[delta])[0]  # samples as positions
    ks = jnp.einsum("ne,hde->nhd", xb, params["k"])[:, sp.kv_head_index(H, KV)]
    return jnp.sum(qs * ks, axis=-1)


def _toy(R, H, KV):
    def loss(params, x, y):
        return jnp.mean((_logits(params, x, R) - y) ** 2)

    def parts(params):  # sum over each group's query heads of W_Q W_Q^T, and W_K W_K^T, projected
        q, k = params["q"], params["k"]
        grouped = q.reshape(KV, H // KV, *q.shape[1:])
        plus = jnp.einsum("gqde,gqfe->gdf", grouped, grouped)
        return charge.commutant(plus, R), charge.commutant(jnp.einsum("gde,gfe->gdf", k, k), R)

    return symmetry.SymmetricModel(f"attention_logit_R{R}", loss, parts)


def _train(R, H, KV, *, weight_decay, lr=0.02, steps=1500, every=50):
    keys = jax.random.split(jax.random.key(7), 4)
    xa, xb = (jax.random.normal(k, (N, E), jnp.float64) for k in keys[:2])
    delta = jax.random.randint(keys[2], (N,), 0, T)
    rng = np.random.default_rng(8)
    teacher = {"q": rng.standard_normal((H, D, E)) / np.sqrt(E), "k": rng.standard_normal((KV, D, E)) / np.sqrt(E)}
    x = (xa, xb, delta)
    y = _logits(teacher, x, R) + 0.05 * jax.random.normal(keys[3], (N, H), jnp.float64)
    q, k = _heads(9, H, KV, D, E, k_scale=0.15)
    params = {"q": jnp.asarray(q[None] / np.sqrt(E)), "k": jnp.asarray(k[None] / np.sqrt(E))}

    def observe(p):  # the statistics, and the charge without the projection onto RoPE's commutant
        full = charge.group_charge(p["q"], p["k"], 0)[0]
        return {**charge.charge_statistics(p["q"], p["k"], p["k"], p["q"], rotary_dim=R), "unprojected": full}

    model = _toy(R, H, KV)
    _, record = symmetry.train(model, params, symmetry.full_batch(x, y), lr=lr, steps=steps, key=KEY,
                               weight_decay=weight_decay, every=every, observe=observe)
    return record, np.asarray(record.charge)[:, 0], np.arange(0, steps, every)  # charge (records, KV, D, D)


def _relative(c, reference):
    return np.linalg.norm((c - reference).reshape(len(c), -1), axis=1) / np.linalg.norm(reference.reshape(-1))


@pytest.mark.parametrize("R,H,KV", [(0, 2, 2), (2, 2, 1)])  # (4, 4, 2) runs in the decay test
def test_charge_is_conserved_without_weight_decay(R, H, KV):
    with jax.enable_x64(True):
        record, c, _ = _train(R, H, KV, weight_decay=0.0)
        assert record.loss[-1] < 0.05 * record.loss[0]  # it learned
        assert np.max(record.recursion_error) < 1e-12  # the one-step identity, exactly
        assert np.max(_relative(c, c[0])) < 0.02  # gradient flow conserves it; GD moves it by O(lr^2)
        if R:  # with RoPE only the commuting part (per-pair norm differences) is conserved
            full = np.asarray(record.observed["unprojected"])[:, 0]
            assert np.max(_relative(full, full[0])) > 0.1


@pytest.mark.parametrize("R,H,KV", [(0, 2, 2), (4, 4, 2)])
def test_weight_decay_drives_the_charge_to_zero_and_the_laws_to_balance(R, H, KV):
    gamma, lr = 0.1, 0.02
    with jax.enable_x64(True):
        record, c, t = _train(R, H, KV, weight_decay=gamma, lr=lr, steps=3000, every=100)
        # C_t = (1 - lr gamma)^(2t) C_0 + lr^2 sum_s (1 - lr gamma)^(2(t-1-s)) P(G G^T)_s: the decay law
        # holds up to the O(lr^2) term, and its flow limit exp(-2 gamma lr t) up to O(lr gamma)
        predicted = (1.0 - lr * gamma) ** (2 * t)[:, None, None, None] * c[0]
        assert np.max(_relative(c, predicted)) < 0.02
        flow = np.exp(-2.0 * gamma * lr * t)[:, None, None, None] * c[0]
        assert np.max(_relative(c, flow)) < 0.02
        size = record.observed["qk_charge"][:, 0]  # (records, H)
        assert np.all(size[-1] < 1e-4 * size[0] + 1e-5)
        pearson, ssr = (record.observed[n][:, 0] for n in ("pearson_qk", "ssr_qk"))
        if R == 0 and H == KV:
            # without RoPE or GQA the laws go to 1 and 0 with the charge
            assert np.all(1 - pearson[0] > 1e-2) and np.all(ssr[0] > 1e-2)
            assert np.all(1 - pearson[-1] < 1e-6) and np.all(ssr[-1] < 1e-4)
            assert np.all(1 - pearson[-1] < 1e-3 * (1 - pearson[0]))
        # the laws at the balanced point do not depend on where the orbit was entered
        for name in ("pearson_qk_balanced", "ssr_qk_balanced"):
            np.testing.assert_allclose(record.observed[name][-1, 0], record.observed[name.removesuffix("_balanced")][-1, 0],
                                       atol=1e-4)



@pytest.mark.slow
def test_the_registered_analysis_reads_the_rotary_dimension_and_keeps_only_ov_under_qk_norms():
    from spectrax.analyses.base import LayerInput, Options

    for name, qk_norm in (("qwen3", True), ("gpt_neox", False)):
        model = sx.load(CHECKPOINTS / name)
        params = jax.tree.map(lambda a: np.asarray(a[:1]), model.params["layers"][0])
        inputs = LayerInput(layer=0, params=params, matrices={}, spec=model.spec)
        rows = charge.analysis.layer_rows(inputs, jax.random.key(0), Options(num_draws=2)).rows
        attn = jax.tree.map(lambda a: a[0], params["attn"])
        direct = charge.charge_layer(attn, jax.random.key(0), num_draws=2,
                                     rotary_dim=gauge.rotary_dim(model.spec, attn["q"].shape[1]))
        np.testing.assert_array_equal(rows["ov_charge"], direct["ov_charge"])
        assert np.isnan(rows["qk_charge"]).all() == qk_norm and np.isnan(rows["pearson_qk_balanced"]).all() == qk_norm
        if not qk_norm:
            np.testing.assert_array_equal(rows["qk_charge"], direct["qk_charge"])
    with pytest.raises(ValueError, match="ModelSpec"):
        charge.analysis.layer_rows(inputs._replace(spec=None), jax.random.key(0), Options(num_draws=2))
