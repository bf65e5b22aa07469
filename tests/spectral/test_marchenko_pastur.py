"""Marchenko-Pastur law: analytic CDF vs integrated density and vs Gaussian samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectrax.spectral import marchenko_pastur as mp


def _integrated_cdf(ratio, sigma2, num=20001):
    """Trapezoid integral of the density on x = mid - half cos(theta), which removes the
    square-root singularities at the edges."""
    lo, hi = (float(e) for e in mp.mp_edges(ratio, sigma2, jnp.float64))
    theta = np.linspace(0.0, np.pi, num)
    x = 0.5 * (lo + hi) - 0.5 * (hi - lo) * np.cos(theta)
    f = np.asarray(mp.mp_density(x, ratio, sigma2), np.float64) * 0.5 * (hi - lo) * np.sin(theta)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(theta))])
    return x, cum


@pytest.mark.parametrize("ratio", [0.05, 0.4, 1.0, 2.5])
def test_cdf_is_the_integral_of_the_density(ratio):
    sigma2 = 0.7
    with jax.enable_x64(True):
        x, cum = _integrated_cdf(ratio, sigma2)
        cdf = np.asarray(mp.mp_cdf(x, ratio, sigma2))
        mass0 = max(0.0, 1.0 - 1.0 / ratio)
        # at y = 1 the density ~ 1/(pi sqrt(x)) at x = 0, where mp_density returns 0; that one
        # trapezoid end point costs ~ dtheta / pi = 5e-5
        tol = 1e-4 if ratio == 1.0 else 1e-8
        np.testing.assert_allclose(cdf - mass0, cum, atol=tol)
        np.testing.assert_allclose(cum[-1], min(1.0, 1.0 / ratio), atol=tol)
        lo, hi = x[0], x[-1]
        np.testing.assert_allclose(mp.mp_cdf(np.array([-1.0, 0.5 * lo, 2 * hi]), ratio, sigma2), [0.0, mass0, 1.0], atol=1e-12)


@pytest.mark.parametrize("p,n", [(300, 1200), (400, 400), (900, 300)])
def test_cdf_matches_large_gaussian_sample(p, n):
    rng = np.random.default_rng(30)
    sigma = 1.3
    x = sigma * rng.standard_normal((p, n))
    lam = np.sort(np.linalg.eigvalsh(x @ x.T / n))         # includes the p - n zeros when p > n
    lam = np.where(lam < 1e-8 * lam[-1], 0.0, lam)
    cdf = np.asarray(mp.mp_cdf(lam.astype(np.float32), p / n, sigma**2), np.float64)
    mass0 = max(0.0, 1.0 - n / p)
    left = cdf - mass0 * (lam == 0)          # F(x-): the atom at 0 is not reached from below
    assert np.sum(lam == 0) == round(mass0 * p)
    i = np.arange(1, p + 1)
    ks = max(np.max(i / p - cdf), np.max(left - (i - 1) / p))
    assert ks < 0.03, ks


@pytest.mark.parametrize("ratio", [0.1, 1.0, 3.0])
def test_quantile_inverts_cdf(ratio):
    p = jnp.linspace(0.02, 0.98, 25)
    q = mp.mp_quantile(p, ratio, 2.0)
    cdf = np.asarray(mp.mp_cdf(q, ratio, 2.0))
    mass0 = max(0.0, 1.0 - 1.0 / ratio)
    atom = np.asarray(p) <= mass0
    np.testing.assert_array_equal(np.asarray(q)[atom], 0.0)          # the point mass at 0
    np.testing.assert_allclose(cdf[~atom], np.asarray(p)[~atom], atol=2e-6)
    assert np.all(np.diff(np.asarray(q)) >= 0)


def test_edges_and_singular_value_edges():
    lo, hi = mp.mp_edges(0.25, 4.0)
    np.testing.assert_allclose([lo, hi], [4.0 * 0.25, 4.0 * 2.25], rtol=1e-6)
    rng = np.random.default_rng(31)
    sigma = 0.02
    s = np.linalg.svd(sigma * rng.standard_normal((200, 1800)), compute_uv=False)
    slo, shi = mp.singular_value_edges((200, 1800), sigma)
    np.testing.assert_allclose([s[-1], s[0]], [slo, shi], rtol=0.03)
    assert mp.aspect_ratio((1800, 200)) == pytest.approx(1 / 9)


@pytest.mark.parametrize("method", ["median", "mean"])
def test_scale_fit_recovers_sigma2(method):
    rng = np.random.default_rng(32)
    sigma2, m, n = 0.09, 128, 1024
    x = np.sqrt(sigma2) * rng.standard_normal((3, m, n))
    lam = np.linalg.svd(x, compute_uv=False) ** 2 / n
    est = np.asarray(mp.fit_mp_scale(lam.astype(np.float32), m / n, method=method))
    np.testing.assert_allclose(est, sigma2, rtol=0.03)


def test_median_scale_fit_is_robust_to_spikes():
    rng = np.random.default_rng(33)
    m, n = 128, 1024
    lam = np.linalg.svd(rng.standard_normal((m, n)), compute_uv=False) ** 2 / n
    lam[:5] *= 50.0                                  # five huge spikes
    med = float(mp.fit_mp_scale(lam.astype(np.float32), m / n, method="median"))
    mean = float(mp.fit_mp_scale(lam.astype(np.float32), m / n, method="mean"))
    assert abs(med - 1.0) < 0.06 < abs(mean - 1.0)
