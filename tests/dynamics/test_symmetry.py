"""Noether charges under (S)GD: the exact one-step recursion, GD's O(lr^2) drift, SGD's equilibrium.

Runs are in float64 (`jax.enable_x64`) and small (<= a few thousand steps of 2-12 parameters).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectrax.dynamics import symmetry as sy


def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def factor_inits(seed, d_out, d_in, rank, scales):
    """U ~ s N(0, 1), W ~ N(0, 1) / s: different imbalances (charges) per init, stacked `(R, ...)`."""
    rng = np.random.default_rng(seed)
    u = np.stack([s * rng.normal(size=(d_out, rank)) for s in scales])
    w = np.stack([rng.normal(size=(rank, d_in)) / s for s in scales])
    return sy.Factors(jnp.asarray(u), jnp.asarray(w))


TEACHER = [[1.0, -0.5, 0.3, 0.8], [0.2, 1.2, -0.7, 0.1]]
SCALES = [1.5, 1.0, 0.7, 0.4]


def numpy_data(seed, num, noise_std=0.5, scales=SCALES):
    """(x `(num, 4)`, y `(num, 2)`) from the teacher, drawn with numpy (cheap outside jit)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, 4)) * np.asarray(scales)
    return jnp.asarray(x), jnp.asarray(x @ np.asarray(TEACHER).T + noise_std * rng.normal(size=(num, 2)))


def numpy_scalar_data(seed, num):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=num)
    return jnp.asarray(x), jnp.asarray(x + rng.normal(size=num))


def models_and_params():
    """(model, params of one run, data) for the three symmetric models (float64: call under x64)."""
    rng = np.random.default_rng(1)
    theta = jnp.asarray([0.4, 1.3])
    factors = jax.tree.map(lambda a: a[0], factor_inits(0, 2, 4, 2, [0.8]))
    layers = (jnp.asarray(rng.normal(size=(3, 4)) / 2), jnp.asarray(rng.normal(size=(3, 3)) / 2),
              jnp.asarray(rng.normal(size=(2, 3)) / 2))
    x, y = numpy_data(0, 64)
    return [(sy.SCALAR, theta, numpy_scalar_data(0, 64)), (sy.FACTORIZATION, factors, (x, y)),
            (sy.DEEP_LINEAR, layers, (x, y))]


def test_data_generators_are_keyed_and_follow_their_law():
    with jax.enable_x64(True):
        teacher = jnp.asarray(TEACHER)
        x, y = sy.teacher_data(jax.random.key(0), 20000, teacher, input_scales=jnp.asarray(SCALES), noise_std=0.5)
        assert x.shape == (20000, 4) and y.shape == (20000, 2) and x.dtype == jnp.float64
        np.testing.assert_allclose(np.std(np.asarray(x), axis=0), SCALES, rtol=0.03)
        np.testing.assert_allclose(np.std(np.asarray(y - x @ teacher.T), axis=0), 0.5, rtol=0.03)
        x2, _ = sy.teacher_data(jax.random.key(0), 20000, teacher, input_scales=jnp.asarray(SCALES), noise_std=0.5)
        np.testing.assert_array_equal(x, x2)
        xs, ys = sy.scalar_data(jax.random.key(1), 20000, slope=2.0, noise_std=0.3, dtype=jnp.float64)
        assert float(jnp.sum(xs * ys) / jnp.sum(xs * xs)) == pytest.approx(2.0, abs=0.02)
        assert float(jnp.std(ys - 2.0 * xs)) == pytest.approx(0.3, rel=0.03)


def test_scalar_charge_is_the_generator_form_and_losses_are_symmetric():
    with jax.enable_x64(True):
        (_, theta, (xs, ys)), (_, factors, (x, y)), (_, layers, _) = models_and_params()
        a = sy.scalar_generator(jnp.float64)
        assert float(sy.scalar_charge(theta)) == pytest.approx(float(sy.quadratic_charge(theta, a)), rel=1e-15)
        assert float(sy.scalar_charge(theta)) == pytest.approx(0.4**2 - 1.3**2, rel=1e-14)
        lam = 0.7
        moved = jnp.asarray([np.exp(lam), np.exp(-lam)]) * theta  # exp(lam A) theta
        assert float(sy.scalar_loss(moved, xs, ys)) == pytest.approx(float(sy.scalar_loss(theta, xs, ys)), rel=1e-13)
        assert float(sy.scalar_charge(moved)) != pytest.approx(float(sy.scalar_charge(theta)), rel=1e-3)
        # the gradient is orthogonal to A theta: why the recursion has no first-order term
        g = jax.grad(sy.scalar_loss)(theta, xs, ys)
        assert abs(float(g @ a @ theta)) < 1e-13 * float(jnp.linalg.norm(g))
        # double rotation / rescaling of the factorization and of each adjacent pair of layers
        b = jnp.asarray([[1.3, 0.4], [-0.2, 0.9]], jnp.float64)
        other = sy.Factors(factors.u @ jnp.linalg.inv(b), b @ factors.w)
        np.testing.assert_allclose(sy.factorization_loss(other, x, y), sy.factorization_loss(factors, x, y), rtol=1e-12)
        c = jnp.eye(3, dtype=jnp.float64) + 0.3 * jnp.ones((3, 3), jnp.float64)
        moved_layers = (c @ layers[0], layers[1] @ jnp.linalg.inv(c), layers[2])
        np.testing.assert_allclose(sy.deep_linear_loss(moved_layers, x, y), sy.deep_linear_loss(layers, x, y),
                                   rtol=1e-12)
        d = sy.layer_charges(layers)
        assert len(d) == 2 and d[0].shape == (3, 3) and d[1].shape == (3, 3)
        np.testing.assert_allclose(d[1], layers[2].T @ layers[2] - layers[1] @ layers[1].T, rtol=1e-14)
        np.testing.assert_allclose(sy.factorization_charge(factors), factors.u.T @ factors.u - factors.w @ factors.w.T,
                                   rtol=1e-14)


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
@pytest.mark.parametrize("index", [0, 1, 2], ids=["scalar", "factorization", "deep_linear"])
def test_recursion_holds_to_1e12_against_a_numpy_step(index, weight_decay):
    """C_{t+1} = (1 - lr gamma)^2 C_t + lr^2 Q(g), against an SGD step taken by hand in numpy."""
    with jax.enable_x64(True):
        model, params, (x, y) = models_and_params()[index]
        lr = 0.05
        rng = np.random.default_rng(index)
        for _ in range(5):
            idx = rng.integers(0, x.shape[0], size=8)
            grads = jax.grad(model.loss)(params, x[idx], y[idx])
            new = jax.tree.map(lambda p, g: (1 - lr * weight_decay) * np.asarray(p) - lr * np.asarray(g), params, grads)
            actual = sy.charge(model, new)
            predicted = sy.next_charge(model, sy.charge(model, params), grads, lr, weight_decay)
            scale = max(float(jnp.max(jnp.abs(s))) for s in jax.tree.leaves(sy.charge_scale(model, new)))
            err = max(float(jnp.max(jnp.abs(a - p))) for a, p in zip(jax.tree.leaves(actual), jax.tree.leaves(predicted)))
            assert err < 1e-12 * scale
            # without the lr^2 term the identity is off by far more than rounding: the test can fail
            first_order = jax.tree.map(lambda c: (1 - lr * weight_decay) ** 2 * c, sy.charge(model, params))
            off = max(float(jnp.max(jnp.abs(a - p))) for a, p in zip(jax.tree.leaves(actual), jax.tree.leaves(first_order)))
            assert off > 1e-8 * scale
            params = jax.tree.map(jnp.asarray, new)


def test_recursion_error_recorded_by_train_is_rounding():
    """SGD with and without weight decay in one vmapped call per model (gamma per run)."""
    with jax.enable_x64(True):
        for model, params, (x, y) in models_and_params():
            runs = stack([params, jax.tree.map(lambda a: 1.2 * a, params)])
            _, traj = sy.train(model, runs, sy.minibatches(x, y, 4), lr=0.01, weight_decay=jnp.asarray([0.0, 0.1]),
                               steps=60, every=3, key=jax.random.key(2))
            assert traj.recursion_error.shape == (20, 2) and np.all(np.isfinite(traj.loss))
            assert float(np.max(traj.recursion_error)) < 1e-12


def test_gd_drift_is_second_order_per_step_and_first_order_per_run():
    """Full-batch GD, gamma = 0: |C_N - C_0| ~ lr^2 at a fixed number of steps N (halving lr
    quarters it), but ~ lr once trained to convergence (the O(lr^2) per step adds up over ~1/lr
    steps). One vmapped call per horizon: 3 inits x 3 learning rates."""
    with jax.enable_x64(True):
        x, y = numpy_scalar_data(0, 256)
        base = np.asarray([[0.3, 1.5], [1.0, 0.8], [2.0, 0.4]])
        lrs = np.asarray([0.002, 0.001, 0.0005])
        inits = jnp.asarray(np.tile(base, (3, 1)))  # run = lr index * 3 + init index
        lr = jnp.asarray(np.repeat(lrs, 3))
        c0 = np.asarray(jax.vmap(sy.scalar_charge)(inits))
        final, _ = sy.train(sy.SCALAR, inits, sy.full_batch(x, y), lr=lr, steps=5, key=jax.random.key(0))
        fixed = np.abs(np.asarray(jax.vmap(sy.scalar_charge)(final)) - c0).reshape(3, 3)
        # the bound the recursion gives: sum over steps of lr^2 |g^T A g| (g varies little in 5 steps)
        g0 = jax.vmap(jax.grad(sy.scalar_loss), in_axes=(0, None, None))(inits, x, y)
        bound = (5 * np.asarray(lr) ** 2 * np.abs(np.asarray(jax.vmap(sy.scalar_charge)(g0))) * 1.2).reshape(3, 3)
        assert np.all(fixed > 0) and np.all(fixed <= bound)
        per_step = fixed[:-1] / fixed[1:]
        assert np.all((per_step > 3.7) & (per_step < 4.3)), per_step
        final, traj = sy.train(sy.SCALAR, inits, sy.full_batch(x, y), lr=lr, steps=8000, every=100,
                               key=jax.random.key(0))
        assert np.all(traj.loss[-1] - traj.loss[-2] > -1e-9)  # converged: the loss no longer falls
        whole = np.abs(np.asarray(jax.vmap(sy.scalar_charge)(final)) - c0).reshape(3, 3)
        per_run = whole[:-1] / whole[1:]
        assert np.all((per_run > 1.8) & (per_run < 2.2)), per_run
        assert np.all(whole < 0.01 * np.abs(c0[:3]))  # and it is small: the charge is (nearly) kept


def test_scalar_sgd_reaches_zero_charge_from_every_init_and_gd_keeps_it():
    with jax.enable_x64(True):
        x, y = numpy_scalar_data(0, 256)
        inits = jnp.asarray([[0.3, 1.5], [1.0, 0.8], [2.0, 0.4]], jnp.float64)
        c0 = np.asarray(jax.vmap(sy.scalar_charge)(inits))
        assert c0.min() < -2 and c0.max() > 3 and 0 < c0[1] < 1
        lr, steps = 0.02, 5000
        _, sgd = sy.train(sy.SCALAR, inits, sy.minibatches(x, y, 1), lr=lr, steps=steps, every=10,
                          key=jax.random.key(1))
        _, gd = sy.train(sy.SCALAR, inits, sy.full_batch(x, y), lr=lr, steps=steps, every=10, key=jax.random.key(1))
        assert np.all(np.abs(sgd.charge[-1]) < 1e-3 * np.abs(c0).max())
        np.testing.assert_allclose(gd.charge[-1], c0, rtol=0.05)
        assert np.ptp(gd.charge[-1]) > 0.9 * np.ptp(c0)
        # the rate: E C_{t+1} = factor C_t, factor = 1 - lr^2 4 mean(e^2 x^2) / B at the minimum, to
        # leading order; the fluctuation of u w about the minimum adds O(lr (u^2 + w^2)) (~10-20% here)
        factor = float(sy.scalar_charge_factor(x, y, lr=lr, batch_size=1))
        t = np.arange(sgd.charge.shape[0]) * 10
        window = t >= 1000
        for r in range(3):
            slope = np.polyfit(t[window], np.log(np.abs(sgd.charge[window, r])), 1)[0]
            assert 0.85 < slope / np.log(factor) < 1.4


def test_factorization_sgd_goes_to_the_predicted_equilibrium():
    with jax.enable_x64(True):
        x, y = numpy_data(4, 512)
        star = sy.factorization_equilibrium(x, y, 2)
        v, s_x, s_e = sy.noise_weighted_moments(x, y)
        np.testing.assert_allclose(star.u @ star.w, v, atol=1e-12)
        np.testing.assert_allclose(star.w @ s_x @ star.w.T, star.u.T @ s_e @ star.u, atol=1e-12)
        predicted = np.linalg.eigvalsh(np.asarray(sy.factorization_charge(star)))
        inits = factor_inits(5, 2, 4, 2, [0.6, 1.0, 1.6])
        d0 = np.linalg.eigvalsh(np.asarray(jax.vmap(sy.factorization_charge)(inits)))
        lr, steps = 0.02, 12000
        _, sgd = sy.train(sy.FACTORIZATION, inits, sy.minibatches(x, y, 1), lr=lr, steps=steps, every=20,
                          key=jax.random.key(1))
        _, gd = sy.train(sy.FACTORIZATION, inits, sy.full_batch(x, y), lr=lr, steps=steps, every=20,
                         key=jax.random.key(1))
        half = sgd.charge[sgd.charge.shape[0] // 2:]  # (T/2, R, r, r)
        late = np.linalg.eigvalsh(half).mean(axis=0)  # (R, r)
        size = np.abs(predicted).max()
        # the trace (linear in D, rotation-invariant) to 8%; each eigenvalue to 20% of the largest:
        # at lr = 0.02 the measured spectrum is ~0.1 wider than the leading-order prediction
        late_trace = np.trace(half, axis1=-2, axis2=-1).mean(axis=0)
        np.testing.assert_allclose(late_trace, predicted.sum(), rtol=0.08)
        assert np.abs(late - predicted).max() < 0.2 * size, (late, predicted)
        gd_end = np.linalg.eigvalsh(gd.charge[-1])
        np.testing.assert_allclose(gd_end, d0, atol=0.05 * np.abs(d0).max())
        assert np.ptp(late, axis=0).max() < 0.1 * np.ptp(gd_end, axis=0).max()


def test_isotropic_factorization_equilibrium_has_the_closed_form():
    """x ~ N(0, I), label noise independent: D* = (sqrt(c) - 1/sqrt(c)) s (c = d_out/d_in)."""
    with jax.enable_x64(True):
        x, y = numpy_data(7, 40000, noise_std=0.7, scales=[1.0] * 4)
        star = sy.factorization_equilibrium(x, y, 2)
        c = 2 / 4
        s = np.linalg.svd(np.asarray(TEACHER), compute_uv=False)
        expected = np.sort((np.sqrt(c) - 1 / np.sqrt(c)) * s)
        np.testing.assert_allclose(np.linalg.eigvalsh(sy.factorization_charge(star)), expected, rtol=0.03)


def test_train_resumes_from_a_checkpoint(tmp_path):
    with jax.enable_x64(True):
        model, params, (x, y) = models_and_params()[1]
        runs = stack([params, params])
        kwargs = dict(lr=0.02, steps=40, every=2, key=jax.random.key(3), chunk=5)
        final, traj = sy.train(model, runs, sy.minibatches(x, y, 2), **kwargs)
        directory = tmp_path / "run"
        sy.train(model, runs, sy.minibatches(x, y, 2), directory=directory, settings={"a": 1}, **kwargs)
        again, traj2 = sy.train(model, runs, sy.minibatches(x, y, 2), directory=directory, settings={"a": 1}, **kwargs)
        np.testing.assert_allclose(traj2.charge, traj.charge, rtol=1e-12)
        chex.assert_trees_all_close(again, final, rtol=1e-12)
        # independent noise per run: the two identical inits part ways under SGD
        assert np.abs(traj.charge[-1, 0] - traj.charge[-1, 1]).max() > 1e-3


def test_refuses_what_it_does_not_handle():
    with jax.enable_x64(True):
        _, params, (x, y) = models_and_params()[1]
        with pytest.raises(ValueError):
            sy.factorization_equilibrium(x, y, 1)
        with pytest.raises(ValueError):
            sy.train(sy.FACTORIZATION, stack([params]), sy.full_batch(x, y), lr=0.1, steps=10, every=3,
                     key=jax.random.key(0))
        with pytest.raises(ValueError):
            sy.layer_charges((jnp.ones((2, 2)),))
        with pytest.raises(ValueError):
            sy.minibatches(x, y, 0)


def made_up_runs(config: sy.Config) -> sy.Runs:
    """Trajectories as the theory has them: GD keeps the scalar charge, SGD shrinks it by exp(-0.01)
    per step; the factorization's SGD sits on D*, GD on its inits; drift ~ lr² and ~ lr."""
    t = np.arange(config.steps // 10) * 10
    c0 = np.array([-2.0, 0.5, 3.0])
    zeros = np.zeros((len(t), 3))
    scalar = {"gd": sy.Record(zeros, np.broadcast_to(c0, zeros.shape), zeros + 1e-16),
              "sgd": sy.Record(zeros, c0 * np.exp(-0.01 * t)[:, None], zeros)}
    d0 = np.array([[[1.0, 0.0], [0.0, -2.0]], [[3.0, 0.0], [0.0, 0.5]]])
    star = np.diag([-1.0, 0.25])
    tf = config.factor_steps // 20
    factor = {"gd": sy.Record(np.zeros((tf, 2)), np.broadcast_to(d0, (tf, *d0.shape)), np.zeros((tf, 2))),
              "sgd": sy.Record(np.zeros((tf, 2)), np.broadcast_to(star, (tf, 2, 2, 2)), np.zeros((tf, 2)))}
    lrs = np.asarray(sy.DRIFT_LRS)[:, None]
    return sy.Runs(scalar, factor, c0, float(np.exp(-0.01)), np.array([-1.0, 0.25]), np.linalg.eigvalsh(d0),
                   3.0 * lrs ** 2 * np.ones((1, 3)), 0.5 * lrs * np.ones((1, 3)), np.ones((4, 12)))


def test_summarize_holds_made_up_runs_against_the_theory():
    config = sy.Config(steps=200, factor_steps=200, drift_steps=200)
    m = sy.summarize(made_up_runs(config), config)
    assert m["recursion_error_max"] == 1e-16
    s, f, g = m["scalar"], m["factorization"], m["gd_drift"]
    assert s["gd_max_relative_drift"] == 0 and s["sgd_max_abs_final"] == pytest.approx(3.0 * np.exp(-1.9))
    np.testing.assert_allclose(s["measured_log_factor_per_step"], -0.01, rtol=1e-9)
    assert s["predicted_log_factor_per_step"] == pytest.approx(-0.01)
    assert f["sgd_spread_across_inits"] == 0 and f["sgd_max_error_vs_prediction"] == 0
    assert f["gd_spread_across_inits"] == pytest.approx(2.5) and f["gd_max_relative_drift"] == 0
    assert f["predicted_trace"] == -0.75 and f["sgd_late_mean_trace"] == [-0.75, -0.75]
    np.testing.assert_allclose(g["slope_after_5_steps"], 2.0)
    np.testing.assert_allclose(g["slope_to_convergence"], 1.0)
    assert g["converged_loss_change"] == 0


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="multiple"):
        sy.Config(steps=105)
    with pytest.raises(ValueError, match="lr"):
        sy.Config(lr=0.0)
