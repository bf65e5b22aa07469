"""Weight-decay collapse: the thresholds and closed forms are the minima, and GD (float64, vmapped
over a γ grid and seeds) ends on them to 1e-4, balanced, with the threshold where theory puts it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectrax.dynamics import collapse as co
from spectrax.dynamics.loop import run_steps


def data64(slope=1.0, key=0):
    x, y = co.make_data(jax.random.key(key), 500, slope=slope, noise=0.5, dtype=jnp.float64)
    return x, y, co.moments(x, y)


def test_moment_losses_equal_the_data_means():
    with jax.enable_x64(True):
        x, y, m = data64()
        rng = np.random.default_rng(0)
        for u, w, g in rng.normal(size=(5, 3)):
            g = abs(g)
            direct = np.mean((u * w * np.asarray(x) - np.asarray(y)) ** 2) + g * (u * u + w * w)
            np.testing.assert_allclose(float(co.loss_product(jnp.float64(u), jnp.float64(w), m, jnp.float64(g))),
                                       direct, rtol=1e-12)
            direct = np.mean((w * w * np.asarray(x) - np.asarray(y)) ** 2) + g * w * w
            np.testing.assert_allclose(float(co.loss_square(jnp.float64(w), m, jnp.float64(g))), direct, rtol=1e-12)


@pytest.mark.parametrize("slope", [1.0, -0.7])
def test_closed_forms_are_stationary_minima_and_the_origin_flips_at_the_threshold(slope):
    with jax.enable_x64(True):
        _, _, m = data64(slope)
        a, b = float(m.xy), float(m.xx)
        assert np.sign(a) == np.sign(slope)
        hess_p = jax.hessian(lambda t, g: co.loss_product(t[0], t[1], m, g))
        grad_p = jax.grad(lambda t, g: co.loss_product(t[0], t[1], m, g))
        gc = float(co.threshold_product(m))
        np.testing.assert_allclose(gc, abs(a), rtol=1e-15)
        for g in (0.1 * gc, 0.5 * gc, 0.9 * gc):
            p = float(co.solution_product(m, jnp.float64(g)))
            np.testing.assert_allclose(p, np.sign(a) * (abs(a) - g) / b, rtol=1e-12)
            r = np.sqrt(abs(p))
            point = jnp.array([r, np.sign(p) * r])
            assert np.abs(np.asarray(grad_p(point, g))).max() < 1e-12
            assert np.linalg.eigvalsh(np.asarray(hess_p(point, g))).min() > 0
            # lower than any unbalanced point with the same product, and than the origin
            for lam in (0.5, 2.0):
                assert float(co.loss_product(lam * point[0], point[1] / lam, m, g)) > float(
                    co.loss_product(point[0], point[1], m, g))
            assert float(co.loss_product(0.0, 0.0, m, g)) > float(co.loss_product(point[0], point[1], m, g))
        origin = jnp.zeros(2, jnp.float64)
        for g, stable in ((gc * (1 - 1e-6), False), (gc * (1 + 1e-6), True)):
            eig = np.linalg.eigvalsh(np.asarray(hess_p(origin, g)))
            np.testing.assert_allclose(eig, [2 * (g - abs(a)), 2 * (g + abs(a))], rtol=1e-9, atol=1e-15)
            assert (eig.min() > 0) == stable
        # the talk's model: threshold 2 E[xy] (0 when E[xy] <= 0), w² = (2a − γ) / (2b)
        gs = float(co.threshold_square(m))
        np.testing.assert_allclose(gs, max(2 * a, 0.0), rtol=1e-15)
        curv = jax.grad(jax.grad(lambda w, g: co.loss_square(w, m, g)))
        for g in (0.3, 1.0, 2.5):
            q = float(co.solution_square(m, jnp.float64(g)))
            np.testing.assert_allclose(q, max(2 * a - g, 0) / (2 * b), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(float(curv(jnp.float64(0.0), g)), 2 * (g - 2 * a), rtol=1e-12)
            if q > 0:
                w = jnp.float64(np.sqrt(q))
                assert abs(float(jax.grad(co.loss_square)(w, m, g))) < 1e-12 and float(curv(w, g)) > 0


def _sweep(m, gammas, steps, every=200, seeds=3, lr=0.05):
    g = jnp.asarray(gammas, jnp.float64)
    state = co.init_state(jax.random.key(1), g, seeds, scale=0.5, lr=lr)
    return run_steps(co.make_step(m, g, lr=lr, inner_steps=every), state, steps // every, chunk=steps // every)


@pytest.fixture(scope="module")
def sweep():
    """γ grid kept >= 0.1 away from both thresholds (a ≈ 1): critical slowing down is elsewhere."""
    with jax.enable_x64(True):
        _, _, m = data64()
        a = float(m.xy)
        gammas = np.array([0.0, 0.2, 0.5, a - 0.1, a + 0.1, 1.5, 2 * a - 0.1, 2 * a + 0.1, 2.8])
        state, traj = _sweep(m, gammas, 12000)
        return m, gammas, state, jax.tree.map(np.asarray, traj)


def test_gd_ends_on_the_closed_forms(sweep):
    with jax.enable_x64(True):
        m, gammas, state, traj = sweep
        p_theory = np.asarray(co.solution_product(m, jnp.asarray(gammas)))
        q_theory = np.asarray(co.solution_square(m, jnp.asarray(gammas)))
        p = np.asarray(state.u * state.w)
        np.testing.assert_allclose(p, np.broadcast_to(p_theory[:, None], p.shape), atol=1e-4)
        np.testing.assert_allclose(np.asarray(state.v) ** 2, np.broadcast_to(q_theory[:, None], p.shape), atol=1e-4)
        # the symmetric state above the thresholds, a broken one below
        assert np.all(np.abs(p[gammas > float(m.xy)]) < 1e-8) and np.all(np.abs(p[gammas < float(m.xy)]) > 0.05)
        assert np.all(np.asarray(state.v)[gammas > 2 * float(m.xy)] ** 2 < 1e-8)
        # the loss is the closed form's
        best = co.loss_product(jnp.sqrt(jnp.abs(jnp.asarray(p_theory))), jnp.sign(jnp.asarray(p_theory)) * jnp.sqrt(
            jnp.abs(jnp.asarray(p_theory))), m, jnp.asarray(gammas))
        np.testing.assert_allclose(traj.loss_product[-1], np.broadcast_to(np.asarray(best)[:, None], p.shape), rtol=1e-9)


def test_balance_with_weight_decay_and_conserved_charge_without(sweep):
    with jax.enable_x64(True):
        m, gammas, state, traj = sweep
        gap = np.abs(np.abs(np.asarray(state.u)) - np.abs(np.asarray(state.w)))
        assert gap[gammas > 0].max() < 1e-6
        # γ = 0: no force toward balance; the charge keeps (to O(η²)) the value of the init
        u0 = co.init_state(jax.random.key(1), jnp.asarray(gammas), 3, scale=0.5)
        c0 = np.asarray(u0.u[0] ** 2 - u0.w[0] ** 2)
        # (measured drift <= 0.05, all of it the η² terms of `test_charge_recursion_is_exact_per_step`)
        np.testing.assert_allclose(traj.charge[-1, 0], c0, atol=0.1)
        assert np.abs(traj.charge[-1, 1:]).max() < 1e-10  # with γ > 0 it decays away
        assert gap[0].max() > 0.05
        np.testing.assert_allclose(np.asarray(state.u * state.w)[0], float(m.xy / m.xx), rtol=1e-6)


def test_thresholds_measured_from_the_sweep(sweep):
    """The line through the broken branch vanishes at the predicted γ_c, with slope −1/b (−1/2b)."""
    with jax.enable_x64(True):
        m, gammas, state, _ = sweep
        p = np.abs(np.asarray(state.u * state.w)).mean(axis=1)
        gc, slope = co.estimate_threshold(gammas, p)
        assert abs(gc - float(co.threshold_product(m))) < 1e-4 and abs(slope + 1 / float(m.xx)) < 1e-4
        gs, slope = co.estimate_threshold(gammas, (np.asarray(state.v) ** 2).mean(axis=1))
        assert abs(gs - float(co.threshold_square(m))) < 1e-4 and abs(slope + 0.5 / float(m.xx)) < 1e-4
        with pytest.raises(ValueError):
            co.estimate_threshold(gammas, np.zeros_like(p))


def test_charge_recursion_is_exact_per_step():
    """C' = (1 − 2ηγ)² C + η² (g_u² − g_w²), g the data term's gradient (float64, to 1e-12)."""
    with jax.enable_x64(True):
        _, _, m = data64()
        lr, gammas = 0.05, np.array([0.0, 0.3, 1.7])
        _, traj = _sweep(m, gammas, 40, every=1, seeds=2, lr=lr)
        u, w, c = (np.asarray(x) for x in (traj.u, traj.w, traj.charge))
        p = u * w
        common = 2 * (float(m.xx) * p - float(m.xy))  # d/dp of the data term
        gu, gw = common * w, common * u
        g = gammas[:, None]
        predicted = (1 - 2 * lr * g) ** 2 * c[:-1] + lr ** 2 * (gu[:-1] ** 2 - gw[:-1] ** 2)
        np.testing.assert_allclose(c[1:], predicted, rtol=0, atol=1e-12)
        assert np.abs(c[1:] - c[:-1]).max() > 1e-3  # the charge does move


def test_negative_correlation_gives_negative_product_and_a_collapsed_square_model():
    with jax.enable_x64(True):
        _, _, m = data64(slope=-0.8)
        gammas = np.array([0.1, 0.4])
        state, _ = _sweep(m, gammas, 8000, seeds=2)
        p = np.asarray(state.u * state.w)
        np.testing.assert_allclose(p, np.broadcast_to(np.asarray(co.solution_product(m, jnp.asarray(gammas)))[:, None],
                                                      p.shape), atol=1e-4)
        assert np.all(p < 0)
        assert np.all(np.asarray(state.v) ** 2 < 1e-6)  # E[xy] < 0: the origin is the minimum for every γ >= 0


def test_refuses_bad_input():
    with pytest.raises(ValueError):
        co.make_data(jax.random.key(0), 1)
    with pytest.raises(ValueError):
        co.make_step(co.Moments(1.0, 1.0, 1.0), jnp.ones(2), inner_steps=0)
    with pytest.raises(ValueError):
        co.init_state(jax.random.key(0), jnp.ones(2), 0)


def short_sweep(config: co.Config, m: co.Moments) -> co.Record:
    """A made-up two-record trajectory that ends on the closed forms, balanced; (γ index 1, seed 0)
    of the product model is off by 1 at the first record."""
    gammas = config.gamma_grid()
    p = np.maximum(abs(float(m.xy)) - gammas, 0) / float(m.xx)
    q = np.maximum(2 * float(m.xy) - gammas, 0) / (2 * float(m.xx))
    u = np.broadcast_to(np.sqrt(p)[None, :, None], (2, len(gammas), config.seeds)).copy()
    u[0, 1, 0] += 1.0
    v = np.broadcast_to(np.sqrt(q)[None, :, None], u.shape).copy()
    zero = np.zeros_like(u)
    return co.Record(u, np.sqrt(p)[None, :, None] + zero, u ** 2 - p[None, :, None], zero, v, zero)


def test_summarize_judges_a_short_sweep():
    config = co.Config(gammas=13, seeds=2, steps=200, every=100)
    m = co.Moments(np.float64(1.0), np.float64(0.5), np.float64(2.0))
    summary = co.summarize(short_sweep(config, m), config, m)
    product, square = summary.models["product"], summary.models["square"]
    assert summary.thresholds == {"product": 0.5, "square": 1.0}
    assert product["threshold_abs_error"] < 1e-12 and square["threshold_abs_error"] < 1e-12
    assert product["slope_measured"] == pytest.approx(-1.0) and square["slope_measured"] == pytest.approx(-0.5)
    assert product["runs_within_tol"] == product["runs"] == 26 and product["max_abs_error"] < 1e-15
    assert product["max_balance_gap_gamma_positive"] < 1e-15 and product["sign_matches_E_xy"]
    settle = summary.runs["steps_to_tol"][summary.runs["model"] == "product"].reshape(13, 2)
    assert settle[1, 0] == 200 and (np.delete(settle.ravel(), 2) == 100).all()
    assert len(summary.runs["gamma"]) == 2 * 13 * 2 and len(summary.table["gamma"]) == 2 * 13
    # a run that ends off its closed form is counted and measured
    traj = short_sweep(config, m)
    traj.v[-1, 0, 1] += 1e-3
    square = co.summarize(traj, config, m).models["square"]
    assert square["runs_within_tol"] == 25 and square["max_abs_error"] == pytest.approx(2 * np.sqrt(0.5) * 1e-3, rel=1e-3)


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="multiple"):
        co.Config(steps=150)
    with pytest.raises(ValueError):
        co.Config(gammas=1)
