"""ESD tools: MP fit and spikes, KS distances, power-law tail MLE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectrax.spectral import esd
from spectrax.spectral.decompose import singular_values

SHAPE = (96, 384)


def _gaussian_sv(rng, batch, shape=SHAPE, sigma=1.0):
    x = sigma * rng.standard_normal((batch,) + shape)
    return np.linalg.svd(x, compute_uv=False).astype(np.float32)


def test_eigenvalues_and_mp_fit_on_noise_and_spikes():
    rng = np.random.default_rng(40)
    m, n = SHAPE
    s = _gaussian_sv(rng, 4, sigma=0.5)
    np.testing.assert_allclose(esd.eigenvalues(s, SHAPE), s**2 / n, rtol=1e-6)
    fit = esd.mp_fit(s, SHAPE)
    np.testing.assert_allclose(fit.sigma2, 0.25, rtol=0.05)
    np.testing.assert_allclose(fit.lambda_plus, fit.sigma2 * (1 + np.sqrt(m / n)) ** 2, rtol=1e-5)
    assert np.all(np.asarray(fit.num_spikes) <= 1)          # Tracy-Widom: 0 or 1 for pure noise
    # plant three strong rank-one spikes
    x = 0.5 * rng.standard_normal(SHAPE)
    u = np.linalg.qr(rng.standard_normal((m, 3)))[0]
    v = np.linalg.qr(rng.standard_normal((n, 3)))[0]
    x += u @ np.diag([60.0, 45.0, 30.0]) @ v.T
    sp = np.linalg.svd(x, compute_uv=False).astype(np.float32)
    fit = esd.mp_fit(sp, SHAPE, edge_margin=0.05)
    assert int(fit.num_spikes) == 3
    np.testing.assert_allclose(fit.sigma2, 0.25, rtol=0.1)


def test_ks_to_mp_small_for_noise_scale_free_and_large_for_structure():
    rng = np.random.default_rng(41)
    s = _gaussian_sv(rng, 3)
    ks = np.asarray(esd.ks_mp(s, SHAPE))
    assert np.all(ks < 0.12), ks                              # ~ 1/sqrt(96)
    np.testing.assert_allclose(esd.ks_mp(300.0 * s, SHAPE), ks, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(esd.ks_mp(s, SHAPE, method="mean"), ks, atol=0.06)
    flat = np.ones((96,), np.float32)                         # semi-orthogonal: one spike of mass 1
    decaying = np.logspace(0.0, -2.0, 96).astype(np.float32)  # a smooth decay, not an MP bulk
    assert float(esd.ks_mp(flat, SHAPE)) > 0.45
    assert float(esd.ks_mp(decaying, SHAPE)) > 0.3


def test_ks_two_sample_matches_numpy():
    rng = np.random.default_rng(42)
    x = rng.standard_normal((3, 50))
    y = rng.standard_normal((3, 70)) + 0.3

    def ref(a, b):
        z = np.concatenate([a, b])
        fa = np.searchsorted(np.sort(a), z, side="right") / a.size
        fb = np.searchsorted(np.sort(b), z, side="right") / b.size
        return np.abs(fa - fb).max()

    got = np.asarray(esd.ks_two_sample(x.astype(np.float32), y.astype(np.float32)))
    np.testing.assert_allclose(got, [ref(a, b) for a, b in zip(x, y)], atol=1e-6)


def test_ks_gaussian_small_for_gaussian_large_for_low_rank():
    rng = np.random.default_rng(43)
    key = jax.random.key(0)
    s = _gaussian_sv(rng, 2)
    d = np.asarray(esd.ks_gaussian(key, s, SHAPE, num_draws=2))
    assert d.shape == (2,) and np.all(d < 0.2), d
    np.testing.assert_allclose(esd.ks_gaussian(key, 0.01 * s, SHAPE, num_draws=2), d, atol=1e-6)
    low = rng.standard_normal((2, 96, 8)) @ rng.standard_normal((2, 8, 384))
    low += 0.05 * rng.standard_normal(low.shape)
    sl = singular_values(low.astype(np.float32))
    assert np.all(np.asarray(esd.ks_gaussian(key, sl, SHAPE, num_draws=2)) > 0.5)


@pytest.mark.parametrize("alpha", [2.0, 3.5])
def test_powerlaw_mle_recovers_alpha_from_pareto_samples(alpha):
    rng = np.random.default_rng(44)
    n = 4000
    # Pareto with p(x) ~ x^-alpha on x >= 1: numpy's pareto(a) + 1 has a = alpha - 1
    x = (rng.pareto(alpha - 1.0, (3, n)) + 1.0).astype(np.float32)
    fit = esd.powerlaw_fit(x)
    assert fit.alpha.shape == (3,)
    np.testing.assert_allclose(fit.alpha, alpha, atol=4 * (alpha - 1) / np.sqrt(1500))
    np.testing.assert_allclose(fit.alpha_std, (np.asarray(fit.alpha) - 1) / np.sqrt(np.asarray(fit.num_tail)), rtol=1e-5)
    assert np.all(np.asarray(fit.ks) < 0.05)


def test_powerlaw_xmin_found_above_a_non_power_law_body():
    rng = np.random.default_rng(45)
    body = rng.uniform(0.05, 1.0, (2, 3000))                    # not a power law
    tail = rng.pareto(1.5, (2, 3000)) + 1.0                     # alpha = 2.5 above x = 1
    x = np.concatenate([body, tail], axis=-1).astype(np.float32)
    fit = esd.powerlaw_fit(x, max_candidates=400)
    np.testing.assert_allclose(fit.xmin, 1.0, atol=0.25)
    np.testing.assert_allclose(fit.alpha, 2.5, atol=0.2)
    naive = 1.0 + x.shape[-1] / np.sum(np.log(x / x.min(-1, keepdims=True)), -1)
    assert np.all(np.abs(naive - 2.5) > 0.5), "fitting from the smallest value would be wrong"


def _powerlaw_reference(x: np.ndarray, min_tail: int = 10) -> tuple[float, float]:
    """Clauset et al.'s x_min search over every candidate, in float64, one candidate at a time."""
    xs = np.sort(np.asarray(x, np.float64))
    best = (np.inf, np.nan, np.nan)
    for j in range(len(xs) - min_tail + 1):
        tail = xs[j:]
        if tail[0] <= 0 or np.sum(np.log(tail / tail[0])) <= 0:
            continue
        alpha = 1 + len(tail) / np.sum(np.log(tail / tail[0]))
        model = 1 - (tail / tail[0]) ** (1 - alpha)
        t = np.arange(len(tail))
        ks = np.max(np.maximum((t + 1) / len(tail) - model, model - t / len(tail)))
        if ks < best[0]:
            best = (ks, alpha, tail[0])
    return best[1], best[2]


def test_powerlaw_xmin_search_is_exact_on_realistic_spectra():
    """576 eigenvalues (a 576 x 1536 matrix, SmolLM2-sized): every candidate is tried, as a plain
    float64 loop does; the old 512-candidate grid picked another x_min on some of these."""
    rng = np.random.default_rng(46)
    mp = np.linalg.svd(rng.standard_normal((6, 576, 1536)), compute_uv=False) ** 2 / 1536
    heavy = np.sort(rng.pareto(2.0, (6, 576)) + 0.05, axis=-1)
    x = np.concatenate([mp, heavy]).astype(np.float32)
    fit = esd.powerlaw_fit(x)
    grid = esd.powerlaw_fit(x, max_candidates=512)
    reference = [_powerlaw_reference(row) for row in x]
    np.testing.assert_allclose(fit.alpha, [a for a, _ in reference], rtol=1e-4)
    np.testing.assert_allclose(fit.xmin, [m for _, m in reference], rtol=1e-6)
    assert not np.allclose(grid.xmin, fit.xmin), "the test must be able to tell a candidate grid from the exact search"


def test_powerlaw_degenerate_inputs_are_flagged():
    x = jnp.concatenate([jnp.zeros((1, 20)), jnp.ones((1, 20))], axis=-1)   # no valid tail
    fit = esd.powerlaw_fit(x, min_tail=5)
    assert np.isnan(fit.alpha).all() and int(fit.num_tail[0]) == 0
    with pytest.raises(ValueError):
        esd.powerlaw_fit(jnp.ones((5,)), min_tail=10)


def test_nan_spectra_are_flagged():
    s = np.abs(np.random.default_rng(46).standard_normal((2, 96))).astype(np.float32)
    s[1, 5] = np.nan
    fit = esd.mp_fit(s, SHAPE)
    assert np.asarray(fit.num_spikes)[1] == -1 and np.isnan(np.asarray(fit.sigma2)[1])
    assert np.asarray(fit.num_spikes)[0] >= 0
    ks = np.asarray(esd.ks_mp(s, SHAPE))
    assert np.isfinite(ks[0]) and np.isnan(ks[1])
    assert np.isnan(np.asarray(esd.ks_two_sample(s, s[::-1]))).all()
    fit = esd.powerlaw_fit(s + 1.0)
    assert np.isnan(np.asarray(fit.alpha)[1]) and int(fit.num_tail[1]) == 0
