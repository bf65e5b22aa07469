"""Prime gaps: the sieve and data, the model against a numpy reference, and the theory of the run.

Theory held against the model: with one token per sequence dL/dW_Q = dL/dW_K = 0 exactly (and
their biases), at init and after training, while W_V, W_O and the MLP learn; under AdamW W_Q(t)
is W_Q(0) prod_s (1 - lr_s wd) to float rounding, so its spectrum is the initialization's. With a
window of w tokens W_Q and W_K get gradients and move beyond the decay; the gradient of the key
bias is zero in any softmax attention (a shift of all of a query's logits). Tiny sizes (E = 16,
600 primes, 30 steps) keep the module to seconds.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectrax import spectral as sp
from spectrax.dynamics import prime_gaps as pg
from spectrax.dynamics.loop import run_steps

WD = 0.05
STEPS = 30


def tiny(window=0, encoding="learned", num_index=599):
    return pg.Config(num_layers=2, width=16, heads=2, mlp=64, encoding=encoding, window=window, num_index=num_index)


@pytest.fixture(scope="module")
def data():
    return pg.make_data(600, window=4, seed=0)


def train(data, cfg, seed=0):
    params0 = pg.init_params(jax.random.key(seed), cfg)
    opt, schedule = pg.optimizer(3e-3, WD, STEPS)
    step, state = pg.make_step(data, cfg, opt, schedule, WD, params0, jax.random.key(seed + 1), batch_size=32,
                               eval_every=10, eval_size=64)
    final, traj = run_steps(step, state, STEPS, chunk=STEPS)
    return params0, final, traj


@pytest.fixture(scope="module")
def single_run(data):
    return train(data, tiny())


@pytest.fixture(scope="module")
def window_run(data):
    return train(data, tiny(window=4))


# ----------------------------------------------------------------------------- data


def test_sieve_matches_known_primes():
    np.testing.assert_array_equal(pg.first_primes(10), [2, 3, 5, 7, 11, 13, 17, 19, 23, 29])
    np.testing.assert_array_equal(pg.first_primes(1), [2])
    np.testing.assert_array_equal(pg.first_primes(5), [2, 3, 5, 7, 11])
    p = pg.first_primes(10_000)
    assert p[99] == 541 and p[999] == 7919 and p[9999] == 104729
    assert np.sum(p < 100_000) == 9592  # pi(10^5)
    # trial division of a sample, independent of the sieve
    for q in p[::997]:
        assert all(q % d for d in range(2, math.isqrt(int(q)) + 1))
    with pytest.raises(ValueError):
        pg.first_primes(0)


def test_gaps_known_values():
    g = pg.prime_gaps(10_000)
    assert g.shape == (9999,) and g[0] == 1 and np.all(g[1:] % 2 == 0)
    np.testing.assert_array_equal(g[:9], [1, 2, 2, 4, 2, 4, 2, 4, 6])
    assert g.sum() == 104729 - 2
    # the record gap below 10^5: 72, after 31397
    assert g.max() == 72 and pg.first_primes(10_000)[np.argmax(g)] == 31397


def test_split_and_z_scoring(data):
    train, test = np.asarray(data.train), np.asarray(data.test)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(4, 599))
    assert test.size == round(0.1 * 595)
    z = np.asarray(data.target, np.float64)
    assert abs(z[train].mean()) < 1e-6 and abs(z[train].std() - 1) < 1e-6
    np.testing.assert_allclose(z, (data.gaps - data.mean) / data.std, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(data.primes + data.gaps, pg.first_primes(600)[1:])


def test_log_trend_slope_is_about_one(data):
    # The mean gap near p is ~ ln p (prime number theorem): the fitted slope on ln p is close to 1.
    fit = pg.log_trend_baseline(pg.make_data(20_000, window=4))
    assert 0.7 < fit["slope"] < 1.3 and 0 < fit["train_r2"] < 0.2


def test_sinusoidal_encoding_formula():
    n = np.array([0, 1, 7, 12345])
    enc = np.asarray(pg.sinusoidal_encoding(jnp.asarray(n, jnp.int32), 8), np.float64)
    freq = 10000.0 ** (-np.arange(0, 8, 2) / 8)
    np.testing.assert_allclose(enc[:, 0::2], np.sin(n[:, None] * freq), atol=2e-3)  # float32 angle of 12345
    np.testing.assert_allclose(enc[:, 1::2], np.cos(n[:, None] * freq), atol=2e-3)
    np.testing.assert_allclose(enc[:3, 0::2], np.sin(n[:3, None] * freq), atol=1e-6)


def test_config_refusals():
    with pytest.raises(ValueError):
        pg.init_params(jax.random.key(0), tiny(encoding="rotary"))
    with pytest.raises(ValueError):
        pg.init_params(jax.random.key(0), tiny()._replace(heads=3))
    with pytest.raises(ValueError):
        pg.init_params(jax.random.key(0), tiny(num_index=0))


# ----------------------------------------------------------------------------- model


def _reference(params, x, cfg):
    """Pre-LN encoder in float64 numpy, position by position, written independently of `apply`."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    E, H = cfg.width, cfg.heads
    D = E // H
    if cfg.window == 0:
        n = np.asarray(x)
        if cfg.encoding == "learned":
            h = p["embed"]["table"][n][:, None, :]
        else:
            freq = 10000.0 ** (-np.arange(0, E, 2) / E)
            h = np.zeros((len(n), 1, E))
            h[:, 0, 0::2], h[:, 0, 1::2] = np.sin(n[:, None] * freq), np.cos(n[:, None] * freq)
    else:
        h = np.asarray(x, np.float64)[..., None] * p["embed"]["w_in"] + p["embed"]["b_in"] + p["embed"]["pos"]

    def ln(v, s, b):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5) * s + b

    def gelu(v):
        return 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))

    for layer in range(cfg.num_layers):
        w = {k: v[layer] for k, v in p["layers"].items()}
        a = ln(h, w["ln1_scale"], w["ln1_bias"])
        wq, wk, wv = (w[n].reshape(H * D, E) for n in "qkv")
        q = a @ wq.T + w["q_bias"].reshape(-1)
        k = a @ wk.T + w["k_bias"].reshape(-1)
        v = a @ wv.T + w["v_bias"].reshape(-1)
        out = np.zeros_like(q)
        for head in range(H):
            sl = slice(head * D, (head + 1) * D)
            logits = np.einsum("btd,bsd->bts", q[..., sl], k[..., sl]) / math.sqrt(D)
            att = np.exp(logits - logits.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            out[..., sl] = att @ v[..., sl]
        h = h + out @ w["o"].reshape(H * D, E) + w["o_bias"]
        m = ln(h, w["ln2_scale"], w["ln2_bias"])
        h = h + gelu(m @ w["up"].T + w["up_bias"]) @ w["down"].T + w["down_bias"]
    y = h[:, -1]
    hd = p["head"]
    y = gelu(y @ hd["w0"].T + hd["b0"])
    y = gelu(y @ hd["w1"].T + hd["b1"])
    return (y @ hd["w2"].T + hd["b2"])[:, 0]


@pytest.mark.parametrize("window,encoding", [(0, "learned"), (0, "sinusoidal"), (4, "learned")])
def test_forward_matches_numpy_reference(data, window, encoding):
    cfg = tiny(window=window, encoding=encoding)
    params = pg.init_params(jax.random.key(3), cfg)
    # nonzero attention biases and sharper attention than at init
    params["layers"]["q_bias"] = jax.random.normal(jax.random.key(4), params["layers"]["q_bias"].shape)
    params["layers"]["k"] = params["layers"]["k"] * 3
    idx = data.train[:8]
    x = pg.inputs(data, idx, cfg)
    pred, attn = pg.apply(params, x, cfg)
    assert attn.shape == (2, 8, 2, cfg.tokens, cfg.tokens)
    np.testing.assert_allclose(np.asarray(pred), _reference(params, x, cfg), rtol=1e-4, atol=1e-5)
    if window:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(data.target)[np.asarray(idx)[:, None] + np.arange(-4, 0)])
        assert float(pg.attention_entropy(attn)) < math.log(4) - 1e-3  # not uniform
    else:
        np.testing.assert_array_equal(np.asarray(attn), 1.0)  # one key: softmax is exactly 1


# ----------------------------------------------------------------------------- the theory


def test_single_token_qk_gradients_are_exactly_zero_at_init(data):
    # (the sinusoidal encoding's run is checked end to end in test_prime_gaps_experiment.py)
    cfg = tiny()
    params = pg.init_params(jax.random.key(1), cfg)
    # nonzero biases too: the fact does not rest on the zero bias init
    for n in ("q_bias", "k_bias", "v_bias"):
        params["layers"][n] = 0.3 * jax.random.normal(jax.random.key(len(n)), params["layers"][n].shape)
    idx = data.train[:64]
    mags = pg.gradient_magnitudes(params, pg.inputs(data, idx, cfg), data.target[idx], cfg)
    for n in pg.ATTENTION_QK:
        assert mags[n] == 0.0, n
    for n in ("v", "v_bias", "o", "o_bias", "up", "down", "ln1_scale"):
        assert mags[n] > 1e-5, n


def test_single_token_run_qk_frozen_except_decay(data, single_run):
    params0, final, traj = single_run
    cfg = tiny()
    assert np.all(traj["qk_grad"] == 0.0) and np.all(traj["v_grad"] > 0) and np.all(traj["mlp_grad"] > 0)
    assert all(np.all(traj["grad_max"][n] == 0.0) for n in pg.ATTENTION_QK)
    assert all(np.all(traj["grad_max"][n] > 0) for n in ("v", "o", "up", "down", "v_bias", "o_bias"))
    assert traj["loss"][-5:].mean() < traj["loss"][:5].mean()  # the rest of the model learns
    idx = data.train[:64]
    mags = pg.gradient_magnitudes(final.params, pg.inputs(data, idx, cfg), data.target[idx], cfg)
    assert all(mags[n] == 0.0 for n in pg.ATTENTION_QK) and mags["v"] > 0 and mags["o"] > 0
    # decoupled decay alone: W(T) = W(0) prod_t (1 - lr_t wd), with the lrs of the run
    factor = pg.decay_factors(traj["lr"], WD)[-1]
    np.testing.assert_allclose(traj["lr"][0], 3e-3, rtol=1e-6)
    assert factor < 1 - STEPS * 3e-3 * WD / 3  # the decay is large enough to be seen
    for n in ("q", "k"):
        w0, w = np.asarray(params0["layers"][n], np.float64), np.asarray(final.params["layers"][n], np.float64)
        assert np.abs(w - w0).max() > 100 * np.abs(w - factor * w0).max()
        np.testing.assert_allclose(w, factor * w0, rtol=1e-5, atol=1e-7 * np.abs(w0).max())
    for n in ("q_bias", "k_bias"):
        assert np.all(np.asarray(final.params["layers"][n]) == 0.0)
    for n in ("v", "o"):
        w0, w = np.asarray(params0["layers"][n]), np.asarray(final.params["layers"][n])
        assert np.linalg.norm(w - factor * w0) > 1e-3 * np.linalg.norm(w0)
    np.testing.assert_allclose(float(final.decay), factor, rtol=1e-6)
    assert traj["excess"]["q"].max() < 1e-5 and traj["excess"]["v"][-1] > 1e-3
    # so the spectrum of W_Q (any scale-free statistic of it) is the initialization's
    s0 = np.asarray(sp.singular_values(np.asarray(params0["layers"]["q"]).reshape(2, 16, 16)))
    s = np.asarray(sp.singular_values(np.asarray(final.params["layers"]["q"]).reshape(2, 16, 16)))
    np.testing.assert_allclose(s, factor * s0, rtol=1e-4)
    np.testing.assert_allclose(pg.qk_kernel_erank(final.params), pg.qk_kernel_erank(params0), rtol=1e-4)


def test_window_attention_learns(data, window_run):
    params0, final, traj = window_run
    cfg = tiny(window=4)
    assert np.all(traj["qk_grad"] > 0)
    assert traj["excess"]["q"][-1] > 1e-2 and traj["excess"]["k"][-1] > 1e-2  # far above rounding (~1e-6)
    ent = [pg.evaluate(p, data, data.test, cfg, batch_size=32)["entropy"] for p in (params0, final.params)]
    assert abs(ent[1] - ent[0]) > 1e-3 and 0 < ent[1] < math.log(4)
    assert np.abs(np.asarray(pg.qk_kernel_erank(final.params) - pg.qk_kernel_erank(params0))).max() > 1e-3
    # softmax is blind to a shift shared by all keys, so the key bias gets no gradient here either
    g = traj["grad_max"]
    assert np.all(g["q"] > 0) and np.all(g["k"] > 0) and np.all(g["q_bias"] > 0)
    assert np.all(g["k_bias"] < 1e-4 * g["q_bias"])


def test_trajectory_records_and_evaluation(data, single_run):
    _, final, traj = single_run
    assert traj["loss"].shape == (STEPS,) and traj["excess"]["q"].shape == (STEPS,)
    evaluated = np.flatnonzero(np.isfinite(traj["test_mse"]))
    np.testing.assert_array_equal(evaluated, [0, 10, 20])
    assert np.all(traj["entropy"] == 0.0)
    # `evaluate` in padded batches equals one unbatched forward
    result = pg.evaluate(final.params, data, data.test, tiny(), batch_size=16)  # 60 gaps: a padded last batch
    pred = pg.apply(final.params, pg.inputs(data, data.test, tiny()), tiny())[0]
    np.testing.assert_allclose(result["mse"], float(jnp.mean(jnp.square(pred - data.target[data.test]))), rtol=1e-5)
    assert result["entropy"] == 0.0
    assert np.all(traj["test_mse"][evaluated] > 0)


def test_weight_matrices_shapes(single_run):
    params0, _, _ = single_run
    mats = pg.weight_matrices(params0, tiny())
    assert mats["l1.q"].shape == (16, 16) and mats["l0.up"].shape == (64, 16) and mats["l0.down"].shape == (16, 64)
    assert mats["embed"].shape == (599, 16) and len(mats) == 13
    np.testing.assert_array_equal(mats["l1.o"], np.asarray(params0["layers"]["o"][1]).reshape(16, 16))


def test_source_ks_is_the_raw_two_sample_distance():
    # 16 x 16 and 2 draws: the shapes of tests/experiments' crop test
    w = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32) * 0.1
    observed, null_mean, null_std = pg.source_ks(w, jax.random.key(0), 2)
    k_ref, _ = jax.random.split(jax.random.key(0))
    reference = np.sort(np.asarray(sp.gaussian_singular_values(k_ref, (4, 16, 16))).ravel())
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    grid = np.concatenate([s, reference])
    cdf = lambda x, pts: np.searchsorted(np.sort(x), pts, side="right") / x.size  # noqa: E731
    assert observed == pytest.approx(np.max(np.abs(cdf(s, grid) - cdf(reference, grid))), abs=1e-6)
    assert 0 <= null_mean <= 1 and null_std >= 0
