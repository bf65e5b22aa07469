"""Deep linear nets: the closed-form SGD equilibrium, the drift formula behind it, and a run that
balances and aligns under SGD but not under GD. float64, widths 3, 3 layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectrax.dynamics import deep_linear as dl
from spectrax.dynamics import symmetry as sy


def teacher(d=3, seed=0):
    rng = np.random.default_rng(seed)
    o1, _ = np.linalg.qr(rng.normal(size=(d, d)))
    o2, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return o1 @ np.diag(np.linspace(2.0, 1.0, d)) @ o2.T


ANISO = np.array([1.6, 1.05, 0.5])


@pytest.mark.parametrize("scales", [np.ones(3), ANISO], ids=["isotropic", "anisotropic"])
@pytest.mark.parametrize("num_layers", [2, 4])
def test_balanced_solution_is_an_equilibrium_with_equal_norms(scales, num_layers):
    with jax.enable_x64(True):
        v = jnp.asarray(teacher())
        cov = jnp.asarray(np.diag(scales**2))
        ws = dl.balanced_solution(v, cov, num_layers)
        np.testing.assert_allclose(sy.deep_linear_apply(ws, jnp.eye(3)).T, v, atol=1e-13)
        assert float(jnp.max(dl.noise_balance_residual(ws, cov, jnp.eye(3)))) < 1e-12
        c = float(dl.balanced_norm(v, cov, num_layers))
        # c = d (||V Sigma_hat^1/2||_* / d)^(2/L), computed here independently
        sig_hat = np.diag(scales**2) * 3 / np.sum(scales**2)
        nuclear = np.linalg.svd(teacher() @ np.sqrt(sig_hat), compute_uv=False).sum()
        assert c == pytest.approx(3 * (nuclear / 3) ** (2 / num_layers), rel=1e-12)
        norms = np.asarray(dl.layer_norms(ws))
        np.testing.assert_allclose(norms[1:], c, rtol=1e-12)
        assert float(dl.whitened_input_norm(ws[0], cov)) == pytest.approx(c, rel=1e-12)
        if np.ptp(scales) > 0:
            assert abs(norms[0] - c) > 0.1 * c  # anisotropic input: the raw input layer is off balance
        else:
            assert norms[0] == pytest.approx(c, rel=1e-12)
        for w in ws[1:-1]:
            assert float(dl.orthogonality_defect(w)) < 1e-12
        # aligned once the input layer is seen through the input covariance (W_1 Sigma_hat^1/2)
        white = dl.whiten_input(ws, cov)
        for below, above in zip(white[:-1], white[1:]):
            assert float(dl.misalignment(below, above)) < 1e-12
        if np.ptp(scales) > 0 and num_layers == 2:
            assert float(dl.misalignment(ws[0], ws[1])) > 0.05  # the raw input layer is not
        # the same product, moved along the symmetry (W_2 B^-1, B W_1): no longer an equilibrium
        b = jnp.diag(jnp.asarray([1.3, 1.0, 0.8]))
        moved = (b @ ws[0], ws[1] @ jnp.linalg.inv(b), *ws[2:])
        np.testing.assert_allclose(sy.deep_linear_apply(moved, jnp.eye(3)).T, v, atol=1e-12)
        assert float(jnp.max(dl.noise_balance_residual(moved, cov, jnp.eye(3)))) > 0.05


def test_noise_balance_is_the_expected_charge_drift_of_real_gradients():
    """At a minimum (product = V), mean over samples of G_{k+1}^T G_{k+1} - G_k G_k^T (per-sample
    gradients from jax.grad) equals 4 [tr(G_{k+1}) H_k - tr(H_{k-1}) G_k]."""
    with jax.enable_x64(True):
        v = teacher()
        cov = np.diag(ANISO**2)
        ws = dl.balanced_solution(jnp.asarray(v), jnp.asarray(cov), 3)
        b = jnp.asarray([[1.2, 0.3, 0.0], [0.0, 0.9, 0.2], [0.1, 0.0, 1.1]])
        ws = (b @ ws[0], ws[1] @ jnp.linalg.inv(b), ws[2])  # same product, unbalanced
        rng = np.random.default_rng(3)
        n, sigma = 400000, 0.7
        x = rng.normal(size=(n, 3)) * ANISO
        y = x @ v.T + sigma * rng.normal(size=(n, 3))
        per_sample = jax.vmap(jax.grad(sy.deep_linear_loss), in_axes=(None, 0, 0))(
            ws, jnp.asarray(x)[:, None], jnp.asarray(y)[:, None])
        measured = [np.mean(np.asarray(jax.vmap(lambda a, b: a.T @ a - b @ b.T)(per_sample[k + 1], per_sample[k])),
                            axis=0) for k in range(2)]
        h = [cov]
        for w in ws:
            h.append(np.asarray(w) @ h[-1] @ np.asarray(w).T)
        g = [sigma**2 * np.eye(3)]
        for w in ws[::-1]:
            g.append(np.asarray(w).T @ g[-1] @ np.asarray(w))
        g = g[::-1]
        for k in (1, 2):
            expected = 4 * (np.trace(g[k + 1]) * h[k] - np.trace(h[k - 1]) * g[k])
            assert np.linalg.norm(measured[k - 1] - expected) < 0.05 * np.linalg.norm(expected)
        # the module's residual is this drift, normalized: nonzero here, zero at the balanced point
        assert float(jnp.min(dl.noise_balance_residual(ws, jnp.asarray(cov), jnp.eye(3)))) > 0.05


@pytest.mark.slow
def test_sgd_balances_and_aligns_the_layers_and_gd_does_not():
    with jax.enable_x64(True):
        v = jnp.asarray(teacher())
        cov = jnp.eye(3)
        c = float(dl.balanced_norm(v, cov, 3))
        scales = jnp.asarray([[0.6, 1.2, 1.8], [1.8, 1.2, 0.6]])
        inits = jax.vmap(lambda k, s: dl.init_layers(k, 3, s))(jax.random.split(jax.random.key(1), 2), scales)
        gen = lambda k, b: sy.teacher_data(k, b, v, noise_std=2.0)  # noqa: E731
        kwargs = dict(lr=0.005, steps=10000, every=100, key=jax.random.key(2), observe=dl.observe(cov, jnp.eye(3)))
        _, sgd = sy.train(sy.DEEP_LINEAR, inits, sy.online_batches(gen, 1), **kwargs)
        x, y = sy.teacher_data(jax.random.key(3), 1024, v, noise_std=2.0)
        _, gd = sy.train(sy.DEEP_LINEAR, inits, sy.full_batch(x, y), **kwargs)
        start = sgd.observed["layer_norms"][0]
        assert np.all(np.ptp(start, axis=1) > 4)  # unbalanced starts
        late = sgd.observed["layer_norms"][50:].mean(axis=0)  # (R, L)
        np.testing.assert_allclose(late, c, rtol=0.15)
        assert np.all(np.ptp(late, axis=1) < 0.1 * c)
        assert np.all(np.ptp(gd.observed["layer_norms"][-1], axis=1) > 3)
        mis_sgd = sgd.observed["misalignment"][50:].mean(axis=0)
        mis_gd = gd.observed["misalignment"][-1]
        assert np.all(mis_sgd < 0.08)
        # GD aligns some pairs partly on its own (from these starts), but not the way SGD does
        assert mis_gd.mean() > 2 * mis_sgd.mean() and mis_gd.max() > 3 * mis_sgd.max()
        assert np.all(sgd.observed["orthogonality"][50:].mean(axis=0) < 0.5 * gd.observed["orthogonality"][-1])
        # the charges: SGD moves them to one place, GD keeps each run's own
        d_sgd = [np.linalg.eigvalsh(d[50:]).mean(axis=0) for d in sgd.charge]
        d_gd = [np.linalg.eigvalsh(d[-1]) for d in gd.charge]
        for a, b in zip(d_sgd, d_gd):
            assert np.abs(a[0] - a[1]).max() < 0.25 * np.abs(b[0] - b[1]).max()


def test_refuses_and_checks_shapes():
    with pytest.raises(ValueError):
        dl.balanced_norm(jnp.eye(3), jnp.eye(3), 1)
    with pytest.raises(AssertionError):
        dl.orthogonality_defect(jnp.ones((2, 3)))
    with pytest.raises(AssertionError):
        dl.misalignment(jnp.ones((3, 2)), jnp.ones((3, 2)))
