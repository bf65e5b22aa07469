"""CoGO modular addition: the data, model, optimizer and Fourier analysis are what docs/dynamics.md, Setups and
the paper say, the normalization gives d - 1 on a hand-built exact solution, and training at
d = 23 reaches it (100% test accuracy; Σ_k 2d Re r_kkk at d - 1, or at the value weight decay
predicts; orders 4 and 6)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spectrax.dynamics import modular as mod


def test_data_is_every_pair_and_a_seeded_split():
    d = 23
    pairs = mod.all_pairs(d)
    a, b, c = (np.asarray(x) for x in pairs)
    assert a.shape == (d * d,) and len(set(zip(a.tolist(), b.tolist()))) == d * d
    np.testing.assert_array_equal(c, (a + b) % d)
    train, test = mod.split_pairs(jax.random.key(0), d)
    assert train.a.shape == (476,) and test.a.shape == (53,) and mod.num_train(d) == 476
    key = lambda p: set(zip(np.asarray(p.a).tolist(), np.asarray(p.b).tolist()))  # noqa: E731
    assert key(train).isdisjoint(key(test)) and len(key(train) | key(test)) == d * d
    np.testing.assert_array_equal(np.asarray(train.c), (np.asarray(train.a) + np.asarray(train.b)) % d)
    again, _ = mod.split_pairs(jax.random.key(0), d)
    other, _ = mod.split_pairs(jax.random.key(1), d)
    np.testing.assert_array_equal(again.a, train.a)
    assert key(other) != key(train)
    with pytest.raises(ValueError):
        mod.all_pairs(8)
    with pytest.raises(ValueError):
        mod.split_pairs(jax.random.key(0), d, 1.0)


def test_forward_is_the_quadratic_network():
    d, hidden = 7, 5
    params = mod.init_params(jax.random.key(2), d, hidden)
    assert params.w_a.shape == params.w_b.shape == (hidden, d) and params.w_c.shape == (d, hidden)
    assert float(jnp.abs(params.w_a).max()) <= 1 / np.sqrt(2 * d) and float(jnp.abs(params.w_c).max()) <= 1 / np.sqrt(hidden)
    pairs = mod.all_pairs(d)
    wa, wb, wc = (np.asarray(w, np.float64) for w in params)
    ea, eb = np.eye(d)[np.asarray(pairs.a)], np.eye(d)[np.asarray(pairs.b)]
    h = ea @ wa.T + eb @ wb.T
    ref = (h**2) @ wc.T
    np.testing.assert_allclose(mod.apply(params, pairs.a, pairs.b), ref, rtol=1e-5, atol=1e-7)
    centered = ref - ref.mean(axis=1, keepdims=True)
    target = np.eye(d)[np.asarray(pairs.c)] - 1 / d
    np.testing.assert_allclose(mod.loss_fn(params, pairs), np.mean((centered - target) ** 2), rtol=1e-5)
    np.testing.assert_allclose(mod.loss_fn(params, pairs, "sum"), d * np.mean((centered - target) ** 2), rtol=1e-5)
    np.testing.assert_allclose(mod.accuracy(params, pairs), np.mean(ref.argmax(1) == np.asarray(pairs.c)))


@pytest.mark.parametrize("d", [7, 23])
def test_exact_solution_gives_d_minus_1(d):
    """The hand-built solution fits every pair exactly; the Fourier normalization then gives
    2d Re r_kkk = 1 at each k != 0 and Σ = d - 1, independently of any training."""
    with jax.enable_x64(True):
        params = mod.exact_solution(d, 4 * (d - 1) + 3, jnp.float64)
        pairs = mod.all_pairs(d)
        out = np.asarray(mod.apply(params, pairs.a, pairs.b))
        target = np.eye(d)[np.asarray(pairs.c)] - 1 / d
        np.testing.assert_allclose(out - out.mean(axis=1, keepdims=True), target, atol=1e-12)
        assert float(mod.loss_fn(params, pairs)) < 1e-25 and float(mod.accuracy(params, pairs)) == 1.0
        f = mod.fourier(params)
        r = np.asarray(mod.r_diagonal(f))
        np.testing.assert_allclose(2 * d * r[1:], 1.0, atol=1e-12)  # real and 1 at every nonzero frequency
        np.testing.assert_allclose(float(mod.r_sum(params)), d - 1, atol=1e-10)
        np.testing.assert_array_equal(mod.frequency_order(f), 8)  # 8 units per frequency, |A| = 1/2
        assert int(mod.active_units(f).sum()) == 4 * (d - 1)
        # r is linear in W_c: halving the output layer halves the sum
        half = mod.Params(params.w_a, params.w_b, params.w_c / 2)
        np.testing.assert_allclose(float(mod.r_sum(half)), (d - 1) / 2, atol=1e-10)
        np.testing.assert_allclose(float(mod.decayed_r_sum(params, 0.0)), d - 1, atol=1e-12)
        # a network with no a-b coupling (W_b = 0) has none of the solution
        assert abs(float(mod.r_sum(mod.Params(params.w_a, 0 * params.w_b, params.w_c)))) < 1e-12
    with pytest.raises(ValueError):
        mod.exact_solution(d, 4 * (d - 1) - 1)


def test_fourier_on_a_hand_built_matrix():
    """cos(ωk x + φ) has A[k] = e^{iφ}/2 and A[d-k] = e^{-iφ}/2; the output side uses the conjugate
    sign, so cos(ωk c + ψ) has C[k] = e^{-iψ}/2. And all of it against a float64 double loop."""
    d, hidden = 11, 6
    rng = np.random.default_rng(0)
    x = np.arange(d)
    freq = np.array([1, 2, 3, 5, 5, 4])
    phase = rng.uniform(-np.pi, np.pi, hidden)
    amp = np.array([1.0, 0.5, 0.2, 0.12, 0.08, 0.3])  # |A| = amp / 2: 0.04 is below the 0.05 threshold
    w = amp[:, None] * np.cos(2 * np.pi * freq[:, None] * x / d + phase[:, None])  # (hidden, d)
    with jax.enable_x64(True):
        params = mod.Params(jnp.asarray(w), jnp.asarray(rng.normal(size=(hidden, d))), jnp.asarray(w.T))
        f = mod.fourier(params)
        a, c = np.asarray(f.a), np.asarray(f.c)
        orders, dominant = np.asarray(mod.frequency_order(f)), np.asarray(mod.dominant_frequency(f))
        active, r = np.asarray(mod.active_units(f)), np.asarray(mod.r_diagonal(f))
    assert a.shape == c.shape == (d, hidden) and a.dtype == np.complex128
    expected_a = np.zeros((d, hidden), complex)
    expected_a[freq, np.arange(hidden)] = amp * np.exp(1j * phase) / 2
    expected_a[d - freq, np.arange(hidden)] = amp * np.exp(-1j * phase) / 2
    np.testing.assert_allclose(a, expected_a, atol=1e-12)
    np.testing.assert_allclose(c, np.conj(expected_a), atol=1e-12)
    loop_b = np.array([[sum(np.asarray(params.w_b)[j, m] * np.exp(-2j * np.pi * k * m / d) for m in range(d)) / d
                        for j in range(hidden)] for k in range(d)])
    np.testing.assert_allclose(np.asarray(f.b), loop_b, atol=1e-12)
    # orders for k = 1..5: units with |A| > 0.05 -> freq 1 (unit 0), 2 (1), 3 (2), 4 (5), 5 (unit 3 only)
    np.testing.assert_array_equal(orders, [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(dominant, freq)
    np.testing.assert_array_equal(active, amp / 2 > 0.05)
    np.testing.assert_array_equal(mod.order_histogram(np.array([[4, 6, 4], [0, 7, 4]]), 6), [1, 0, 0, 0, 3, 0, 2])
    # r_kkk: a unit carrying k in a, b and c adds A B C; here B is random, so check the formula
    np.testing.assert_allclose(r, np.sum(a * np.asarray(f.b) * c, axis=1), atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradients_match_finite_differences(reduction):
    d, hidden = 7, 9
    with jax.enable_x64(True):
        p = mod.init_params(jax.random.key(4), d, hidden)
        params = mod.Params(*(w.astype(jnp.float64) * 3 for w in p))  # away from the small-output regime
        train, _ = mod.split_pairs(jax.random.key(5), d)
        loss = jax.jit(lambda q: mod.loss_fn(q, train, reduction))
        grad = jax.grad(loss)(params)
        rng = np.random.default_rng(1)
        for _ in range(3):
            v = mod.Params(*(jnp.asarray(rng.normal(size=w.shape)) for w in params))
            eps = 1e-5
            plus = loss(mod.Params(*(w + eps * dw for w, dw in zip(params, v))))
            minus = loss(mod.Params(*(w - eps * dw for w, dw in zip(params, v))))
            fd = (float(plus) - float(minus)) / (2 * eps)
            analytic = sum(float(jnp.sum(g * dw)) for g, dw in zip(grad, v))
            assert abs(fd - analytic) <= 1e-7 * max(1.0, abs(analytic)), (fd, analytic)


def _adam_by_hand(theta, grads, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam(weight_decay=wd): g <- g + wd θ, then Adam on g."""
    m = v = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        g = g + wd * theta
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        theta = theta - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return theta


def test_coupled_l2_puts_the_decay_inside_adam():
    lr, wd = 0.01, 0.05
    rng = np.random.default_rng(3)
    theta0 = rng.normal(size=6)
    grads = [rng.normal(size=6) * 1e-3 for _ in range(4)]
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        opt = mod.optimizer(lr, wd)
        theta, state = jnp.asarray(theta0), opt.init(jnp.asarray(theta0))
        for g in grads:
            u, state = opt.update(jnp.asarray(g), state, theta)
            theta = optax.apply_updates(theta, u)
        np.testing.assert_allclose(theta, _adam_by_hand(theta0, grads, lr, wd), rtol=1e-12, atol=1e-14)
        # with no loss gradient the decay alone is normalized: the first step moves every weight by
        # lr toward 0 (sign(θ)), where AdamW moves it by lr·wd·θ (and plain Adam not at all)
        zero = jnp.zeros(6)
        coupled, _ = opt.update(zero, opt.init(zero), jnp.asarray(theta0))
        adamw, _ = optax.adamw(lr, weight_decay=wd).update(zero, optax.adamw(lr, weight_decay=wd).init(zero),
                                                            jnp.asarray(theta0))
    np.testing.assert_allclose(coupled, -lr * np.sign(theta0), rtol=1e-6)
    np.testing.assert_allclose(adamw, -lr * wd * theta0, rtol=1e-12)
    assert np.abs(np.asarray(coupled) - np.asarray(adamw)).min() > 1e-3


def test_sweep_layout_matches_single_runs():
    """Run r = w * len(seeds) + s of one vmapped call is the run of (wd w, seed s) on its own."""
    kw = dict(d=7, hidden=16, epochs=15, chunk=15)
    params, traj, train, _ = mod.run([3, 4], wds=[0.0, 1e-3], **kw)
    assert traj.test_acc.shape == (15, 4) and params.w_a.shape == (4, 16, 7)
    alone, alone_traj, alone_train, _ = mod.run([4], wds=[1e-3], **kw)
    np.testing.assert_array_equal(train.a[3], alone_train.a[0])
    np.testing.assert_allclose(params.w_c[3], alone.w_c[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(traj.train_loss[:, 3], alone_traj.train_loss[:, 0], rtol=1e-5)
    np.testing.assert_array_equal(train.a[0], train.a[2])  # same seed, same split across wds
    assert not np.allclose(params.w_c[1], params.w_c[3])  # wd changes the run


def test_training_at_d23_reaches_d_minus_1_with_the_papers_loss():
    """The issue's bound: 100% test accuracy and Σ_k 2d Re r_kkk within 0.2 of d - 1. With the
    paper's ℓ (squared error summed over the d outputs) at wd 5e-5 it holds from epoch ~560
    (5 seeds measured: 529-561); 1000 epochs leave a margin."""
    params, traj, _, _ = mod.run([0], d=23, wds=[5e-5], epochs=1000, chunk=1000, reduction="sum")
    assert float(traj.test_acc[-1, 0]) == 1.0 and float(traj.train_acc[-1, 0]) == 1.0
    assert abs(float(traj.r_sum[-1, 0]) - 22) < 0.2
    one = jax.tree.map(lambda x: x[0], params)
    np.testing.assert_allclose(float(mod.r_sum(one)), 22, atol=0.2)


def test_training_at_d23_spec_loss_gives_order_4_and_6_and_the_decay_shrinkage():
    """the documented setup's MSE (mean over pairs and outputs) at wd 5e-5: 100% test accuracy, every frequency
    carried by 4 or 6 units (the paper's claim), and Σ_k 2d Re r_kkk not at d - 1 but where the
    stationarity of loss + wd/2 ||θ||² puts it for the learned norm (~21.1 against 22)."""
    params, traj, _, _ = mod.run([0, 1], d=23, wds=[5e-5], epochs=600, chunk=600)
    assert np.all(traj.test_acc[-1] == 1.0)
    for r in range(2):
        one = jax.tree.map(lambda x, r=r: x[r], params)
        orders = np.asarray(mod.frequency_order(mod.fourier(one)))
        assert set(orders.tolist()) <= {4, 6}, orders
        measured, predicted = float(mod.r_sum(one)), float(mod.decayed_r_sum(one, 5e-5))
        assert abs(measured - predicted) < 0.15 and 22 - measured > 0.5, (measured, predicted)
