"""Chi bidiagonals: the degrees of freedom, the law against dense Gaussian draws (two-sample KS
tests that a wrong choice fails), and the bisection's accuracy against LAPACK."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectrax.spectral import bidiagonal as bd
from spectrax.spectral import nulls

DRAWS = 2000
ALPHA = 1e-4          # per comparison: ~20 comparisons below, so a correct law fails < 0.2% of seeds


def _dense(diag, off):
    """The `(..., k, k)` upper bidiagonal matrices, float64 numpy."""
    diag, off = np.asarray(diag, np.float64), np.asarray(off, np.float64)
    k = diag.shape[-1]
    b = np.zeros(diag.shape + (k,))
    i = np.arange(k)
    b[..., i, i] = diag
    b[..., i[:-1], i[:-1] + 1] = off
    return b


def _ks(a, b):
    """Two-sample Kolmogorov-Smirnov statistic of 1-D samples (numpy, float64)."""
    a, b = np.sort(a), np.sort(b)
    z = np.concatenate([a, b])
    return np.max(np.abs(np.searchsorted(a, z, "right") / a.size - np.searchsorted(b, z, "right") / b.size))


def _critical(n1, n2, alpha=ALPHA):
    """Asymptotic KS critical value: P(D > c) <= alpha for two i.i.d. samples of one law."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n1 + n2) / (n1 * n2))


def _statistics(s):
    """Per-draw statistics of spectra `s (draws, k)`: largest, smallest, erank, stable rank."""
    s = np.asarray(s, np.float64)
    p = s / s.sum(-1, keepdims=True)
    return {
        "sigma_max": s[:, 0],
        "sigma_min": s[:, -1],
        "erank": np.exp(-np.sum(p * np.log(p), -1)),
        "stable_rank": np.sum(s * s, -1) / s[:, 0] ** 2,
    }


def _distances(s, ref):
    """KS distance / critical value for each statistic and for the pooled spectrum (> 1: reject).

    The pooled spectrum's values are not independent within a draw, but they repel (their
    empirical CDF fluctuates less than an i.i.d. sample's), so the i.i.d. critical value of the
    pooled sizes is conservative there.
    """
    a, b = _statistics(s), _statistics(ref)
    out = {name: _ks(a[name], b[name]) / _critical(len(a[name]), len(b[name])) for name in a}
    out["pooled"] = _ks(np.ravel(s), np.ravel(ref)) / _critical(np.size(s), np.size(ref))
    return out


@pytest.fixture(scope="module")
def dense_spectra():
    """Singular values of `DRAWS` dense N(0, 1) matrices per shape (float64 LAPACK), by shape."""
    rng = np.random.default_rng(60)
    cache = {}

    def get(shape):
        if shape not in cache:
            cache[shape] = np.linalg.svd(rng.standard_normal((DRAWS,) + shape), compute_uv=False)
        return cache[shape]

    return get


@pytest.mark.parametrize("dof", [1, 2, 3, 9, 200, 13824])
def test_chi_variates_have_the_chi_law(dof):
    """Every degree of freedom the bidiagonals use (1 is the alpha < 1 branch of the sampler)
    against numpy's chi-square, two-sample KS; a dof off by one is rejected at these sizes."""
    x = np.asarray(bd.chi_variates(jax.random.key(dof), np.full(DRAWS, dof), (2,)), np.float64).ravel()
    ref = np.sqrt(np.random.default_rng(dof).chisquare(dof, 2 * DRAWS))
    assert _ks(x, ref) < _critical(x.size, ref.size)
    if dof < 10:
        wrong = np.sqrt(np.random.default_rng(dof).chisquare(dof + 1, 2 * DRAWS))
        assert _ks(x, wrong) > _critical(x.size, wrong.size)


def test_chi_variates_are_never_zero_at_large_degrees_of_freedom():
    """The sampler once flagged a borderline proposal accepted without keeping its value (XLA
    evaluated the acceptance test twice, rounding differently): ~1 in 60,000 variates came out 0,
    here 8 of these 491,520 (the diagonal of Bartlett factors of 128 x 5120 Gaussian matrices), a
    zero singular value and a pooled null hundreds of times too wide."""
    dof = 5120 - np.arange(128)
    smallest = [float(np.min(bd.chi_variates(jax.random.key(seed), dof, (640,)))) for seed in range(6)]
    assert min(smallest) > 60, smallest  # chi_5000 is 70.7 +- 0.7


def test_degrees_of_freedom():
    for shape in [(5, 3), (3, 5)]:
        diag, off = bd.chi_degrees_of_freedom(shape)
        np.testing.assert_array_equal(diag, [5, 4, 3])
        np.testing.assert_array_equal(off, [2, 1])
    diag, off = bd.chi_degrees_of_freedom((1, 4))
    np.testing.assert_array_equal(diag, [4])
    assert off.shape == (0,)
    with pytest.raises(ValueError):
        bd.chi_degrees_of_freedom((0, 4))


SHAPES = [(6, 6), (10, 4), (4, 10), (48, 32)]


@pytest.mark.parametrize("method", ["bisection", "bartlett"])
@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_singular_values_have_the_dense_law(shape, method, dense_spectra):
    """The entry point the nulls use, against dense draws: 4 statistics + the pooled spectrum,
    by both of its methods (bisection of a chi bidiagonal from k = BISECTION_FROM_K, a Bartlett
    factor's SVD below)."""
    s = np.asarray(nulls.gaussian_singular_values(jax.random.key(61), (DRAWS,) + shape, method=method))
    assert s.shape == (DRAWS, min(shape)) and np.all(np.diff(s, axis=-1) <= 0)
    distances = _distances(s, dense_spectra(shape))
    assert max(distances.values()) < 1.0, distances


def _wrong_degrees_of_freedom(shape):
    diag, off = bd.chi_degrees_of_freedom(shape)
    variants = {"diag+1": (diag + 1, off), "off+1": (diag, off + 1), "diag-1": (diag - 1, off),
                "off-1": (diag, off - 1)}
    m, n = shape
    if m < n:   # the formula for tall matrices applied to a wide one unswapped
        k = m
        variants["unswapped"] = (m - np.arange(k), n - 1 - np.arange(k - 1))
    return variants


@pytest.mark.parametrize("shape", SHAPES)
def test_two_sample_tests_reject_wrong_degrees_of_freedom(shape, dense_spectra):
    """The same tests have power: every off-by-one choice of the chi degrees of freedom fails them
    (the largest distance was 2.4-14x the critical value in a run with other seeds at `DRAWS`
    draws; asserted above 1.2x)."""
    ref = dense_spectra(shape)
    key = jax.random.key(62)
    right = bd.bidiagonal_singular_values(*bd.chi_bidiagonal(key, *bd.chi_degrees_of_freedom(shape), (DRAWS,)))
    assert max(_distances(right, ref).values()) < 1.0
    for name, (diag, off) in _wrong_degrees_of_freedom(shape).items():
        s = bd.bidiagonal_singular_values(*bd.chi_bidiagonal(key, diag, off, (DRAWS,)))
        distances = _distances(s, ref)
        assert max(distances.values()) > 1.2, (name, distances)


def _random_bidiagonals(rng, k, count, graded=False):
    diag = np.sqrt(rng.chisquare(np.arange(k, 0, -1) + 3.0, (count, k)))
    off = np.sqrt(rng.chisquare(np.arange(k - 1, 0, -1) + 0.5, (count, k - 1)))
    if graded:   # entries over 8 orders of magnitude: tiny singular values, cond up to ~1e8
        diag = diag * np.logspace(0, -8, k)
        off = off * np.logspace(0, -8, k)[1:]
    return diag, off


@pytest.mark.parametrize("k", [1, 2, 7, 64, 300])
def test_float64_singular_values_match_lapack(k):
    """float64 bisection against numpy's SVD of the same bidiagonal matrices, every singular value."""
    rng = np.random.default_rng(63 + k)
    diag, off = _random_bidiagonals(rng, k, 5)
    ref = np.linalg.svd(_dense(diag, off), compute_uv=False)
    with jax.enable_x64(True):
        s = np.asarray(bd.bidiagonal_singular_values(jnp.asarray(diag), jnp.asarray(off)))
    assert s.dtype == np.float64
    np.testing.assert_allclose(s, ref, rtol=1e-13 * max(k, 8), atol=0)


def test_float32_is_relatively_accurate_down_to_the_smallest_singular_value():
    """float32 bisection keeps ~1e-7 relative accuracy on every singular value, even 1e8 below the
    largest, where a dense float32 SVD is only accurate to eps * sigma_max (relative 1e-7 * cond)."""
    rng = np.random.default_rng(64)
    for graded in (False, True):
        diag, off = (x.astype(np.float32) for x in _random_bidiagonals(rng, 120, 4, graded))
        ref = np.linalg.svd(_dense(diag, off), compute_uv=False)     # float64 of the same entries
        if graded:
            assert np.min(ref[:, -1] / ref[:, 0]) < 1e-6
        s = np.asarray(bd.bidiagonal_singular_values(diag, off))
        assert s.dtype == np.float32
        np.testing.assert_allclose(s, ref, rtol=2e-6, atol=0)
    with jax.enable_x64(True):   # float64 agrees with LAPACK on the graded case too
        s64 = np.asarray(bd.bidiagonal_singular_values(diag.astype(np.float64), off.astype(np.float64)))
    np.testing.assert_allclose(s64, ref, rtol=1e-11, atol=0)


def test_edge_cases_scale_and_entry_checks():
    rng = np.random.default_rng(65)
    diag, off = _random_bidiagonals(rng, 9, 4)
    diag, off = diag.astype(np.float32), off.astype(np.float32)
    ref = np.linalg.svd(_dense(diag, off), compute_uv=False)
    # any scale: no overflow or underflow in the pivots, signs ignored
    for scale in (1e-30, 1e30):
        s = np.asarray(bd.bidiagonal_singular_values(diag * np.float32(scale), -off * np.float32(scale)))
        np.testing.assert_allclose(s / scale, ref, rtol=2e-6)
    # a NaN matrix, a zero matrix, and the others unaffected
    bad_diag, bad_off = diag.copy(), off.copy()
    bad_diag[1, 3] = np.nan
    bad_diag[2], bad_off[2] = 0.0, 0.0
    s = np.asarray(bd.bidiagonal_singular_values(bad_diag, bad_off))
    assert np.all(np.isnan(s[1])) and np.all(s[2] == 0.0)
    np.testing.assert_allclose(s[[0, 3]], ref[[0, 3]], rtol=2e-6)
    # k = 1: |d|
    one = bd.bidiagonal_singular_values(jnp.array([[-3.0]]), jnp.zeros((1, 0)))
    np.testing.assert_allclose(one, [[3.0]])
    with pytest.raises(AssertionError):
        bd.bidiagonal_singular_values(jnp.ones((2, 5)), jnp.ones((2, 5)))
    with pytest.raises(AssertionError):
        bd.chi_bidiagonal(jax.random.key(0), np.ones(4), np.ones(4))


def test_compiles_once_per_shape():
    """One program per shape whatever the values, degrees of freedom included (they are traced)."""
    rng = np.random.default_rng(66)
    before = bd.bidiagonal_singular_values._cache_size(), bd.chi_bidiagonal._cache_size()
    for i in range(3):
        diag, off = (x.astype(np.float32) for x in _random_bidiagonals(rng, 11, 3))
        bd.bidiagonal_singular_values(diag, off)
        bd.chi_bidiagonal(jax.random.key(i), np.arange(12, 7, -1) + i, np.arange(4, 0, -1), (3,))
    after = bd.bidiagonal_singular_values._cache_size(), bd.chi_bidiagonal._cache_size()
    assert after == (before[0] + 1, before[1] + 1)
