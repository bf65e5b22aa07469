"""Representation alignments: float64 numpy references, the properties of the alignment, the power
law and FDT fits on matrices with known relations, and the random-basis null against an
independent numpy Monte Carlo."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrax.spectral import alignment as al

B, D = 3, 6  # one batch shape for the property tests: compiled once


def wishart(rng, batch, d, rank):
    x = rng.normal(size=(batch, d, rank))
    return x @ np.swapaxes(x, -1, -2) / rank


def np_pearson(a, b):
    return np.array([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)])


def haar(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_layer_matrices_match_float64_reference():
    rng = np.random.default_rng(0)
    n, d_in, d_out = 50, 7, 5
    h_a, g_b, w = rng.normal(size=(2, n, d_in)), rng.normal(size=(2, n, d_out)), rng.normal(size=(2, d_out, d_in))
    with jax.enable_x64(True):
        m = al.layer_matrices(jnp.asarray(h_a), jnp.asarray(g_b), jnp.asarray(w))
        assert m.h_a.dtype == jnp.float64
        h_b, g_a = h_a @ np.swapaxes(w, -1, -2), g_b @ w
        ref = [np.einsum("bni,bnj->bij", x, x) / n for x in (h_a, g_a)]
        ref += [np.swapaxes(w, -1, -2) @ w]
        ref += [np.einsum("bni,bnj->bij", x, x) / n for x in (h_b, g_b)] + [w @ np.swapaxes(w, -1, -2)]
        for got, want in zip(m, ref):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)
        # explicit h_b / g_a (a bias, a residual) replace the chain-rule defaults
        m2 = al.layer_matrices(jnp.asarray(h_a), jnp.asarray(g_b), jnp.asarray(w), h_b=jnp.asarray(h_b + 1.0))
        np.testing.assert_allclose(np.asarray(m2.h_b), np.einsum("bni,bnj->bij", h_b + 1, h_b + 1) / n, rtol=1e-12)
    # float32 inputs stay float32 and agree with the reference to float32 rounding
    m32 = al.layer_matrices(h_a.astype(np.float32), g_b.astype(np.float32), w.astype(np.float32))
    assert m32.z_b.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(m32.g_a), ref[1], rtol=2e-5, atol=1e-5)
    with pytest.raises(AssertionError):
        al.layer_matrices(h_a, g_b, np.swapaxes(w, -1, -2))  # W the wrong way round


def test_alignment_matches_numpy_and_is_batched():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 2, 5, 5)), rng.normal(size=(4, 2, 5, 5))
    with jax.enable_x64(True):
        got = np.asarray(al.alignment(jnp.asarray(a), jnp.asarray(b)))
    assert got.shape == (4, 2)
    np.testing.assert_allclose(got.ravel(), np_pearson(a.reshape(8, 5, 5), b.reshape(8, 5, 5)), rtol=1e-12)
    assert np.isnan(al.alignment(jnp.ones((3, 3)), jnp.eye(3)))  # constant matrix: undefined


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c1=st.floats(1e-3, 1e3), c2=st.floats(1e-3, 1e3))
def test_alignment_properties(seed, c1, c2):
    rng = np.random.default_rng(seed)
    a = jnp.asarray(wishart(rng, B, D, 3), jnp.float32)
    b = jnp.asarray(wishart(rng, B, D, 4), jnp.float32)
    np.testing.assert_allclose(al.alignment(a, a), 1.0, atol=2e-6)
    ab = np.asarray(al.alignment(a, b))
    assert np.all(np.abs(ab) <= 1 + 1e-6)
    np.testing.assert_allclose(al.alignment(b, a), ab, atol=1e-6)  # symmetric
    np.testing.assert_allclose(al.alignment(c1 * a, c2 * b), ab, atol=2e-5)  # positive scaling
    np.testing.assert_allclose(al.alignment(a, -c2 * a), -1.0, atol=2e-6)
    np.testing.assert_allclose(ab, np_pearson(np.asarray(a, np.float64), np.asarray(b, np.float64)), atol=2e-5)


def test_random_basis_keeps_the_spectrum_and_changes_the_basis():
    rng = np.random.default_rng(2)
    x = jnp.asarray(wishart(rng, 4, 8, 3), jnp.float32)
    y = al.random_basis(jax.random.key(0), x)
    np.testing.assert_allclose(np.linalg.eigvalsh(np.asarray(y)), np.linalg.eigvalsh(np.asarray(x)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(y), np.swapaxes(np.asarray(y), -1, -2), atol=1e-6)
    assert np.max(np.abs(np.asarray(y - x))) > 0.1


def test_null_matches_an_independent_numpy_monte_carlo():
    """Mean and std of the alignment of a fixed pair of spectra in independent Haar bases: the jit
    kernel against a float64 numpy Monte Carlo with its own Haar sampler."""
    rng = np.random.default_rng(3)
    d = 6
    lam = [np.array([3.0, 1.0, 0.5, 0.2, 0.0, 0.0]), np.array([1.0, 1.0, 0.8, 0.1, 0.1, 0.05])]
    ref = []
    for _ in range(4000):
        q1, q2 = haar(rng, d), haar(rng, d)
        ref.append(np.corrcoef(((q1 * lam[0]) @ q1.T).ravel(), ((q2 * lam[1]) @ q2.T).ravel())[0, 1])
    ref = np.array(ref)
    mats = [np.diag(lam[0]), np.diag(lam[1])]
    m = al.LayerMatrices(*[jnp.asarray(mats[i % 2][None], jnp.float32) for i in (0, 1, 0, 0, 1, 0)])
    null = al.random_basis_null(jax.random.key(4), m, al.six_alignments, num_draws=1024, batch_size=256)
    for name in ("hg_a", "gz_b"):  # both pair spectrum 0 with spectrum 1
        mean, std = float(null.mean[name][0]), float(null.std[name][0])
        assert abs(mean - ref.mean()) < 4 * np.hypot(ref.std() / np.sqrt(len(ref)), std / np.sqrt(1024)), (mean, ref.mean())
        assert abs(std / ref.std() - 1) < 0.12
    # the null of two PSD matrices is not 0: the diagonals correlate
    assert ref.mean() > 0.1
    # hz_a pairs spectrum 0 with itself in independent bases: still far below 1
    assert float(null.mean["hz_a"][0]) < 0.6


def test_independent_matrices_sit_in_the_null_and_aligned_ones_do_not():
    rng = np.random.default_rng(5)
    n, d = 24, 10
    h = wishart(rng, n, d, 4)
    g_indep = wishart(rng, n, d, 12)  # independent Haar basis: a draw from h's null
    g_aligned = h @ h + 0.05 * wishart(rng, n, d, 12)  # shares h's eigenbasis, λ_g ≈ λ_h²
    z = wishart(rng, n, d, 6)
    m = al.LayerMatrices(*[jnp.asarray(x, jnp.float32) for x in (h, g_indep, z, h, g_aligned, z)])
    null = al.random_basis_null(jax.random.key(6), m, al.six_alignments, num_draws=64, batch_size=16)
    obs = al.six_alignments(m)
    z_indep = (np.asarray(obs["hg_a"]) - np.asarray(null.mean["hg_a"])) / np.asarray(null.std["hg_a"])
    z_aligned = (np.asarray(obs["hg_b"]) - np.asarray(null.mean["hg_b"])) / np.asarray(null.std["hg_b"])
    assert abs(z_indep.mean()) < 0.75 and np.mean(np.abs(z_indep) < 2.5) > 0.85  # ~N(0, 1)
    assert np.all(z_aligned > 4)
    # the raw alignment of independent matrices is clearly positive: only the null tells them apart
    assert np.asarray(obs["hg_a"]).mean() > 0.2


def test_power_law_fit_recovers_the_exponent():
    rng = np.random.default_rng(7)
    y = np.sort(rng.uniform(0.01, 1.0, size=(2, 12)))[:, ::-1]
    x = 3.0 * y ** np.array([[2.0], [-0.5]])
    fit = al.power_law_fit(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), k=8)
    np.testing.assert_allclose(fit.alpha, [2.0, -0.5], atol=1e-4)
    np.testing.assert_allclose(fit.intercept, np.log(3.0), atol=1e-3)
    np.testing.assert_allclose(fit.r2, 1.0, atol=1e-5)
    # noisy: against numpy's float64 least squares over the same leading entries
    xn = x * np.exp(0.3 * rng.normal(size=x.shape))
    xn[0, 2] = 0.0  # a numerically zero eigenvalue: skipped
    with jax.enable_x64(True):
        fit = al.power_law_fit(jnp.asarray(xn), jnp.asarray(y), k=8)
    for i in range(2):
        keep = (np.arange(12) < 8) & (xn[i] > 0)
        slope, icpt = np.polyfit(np.log(y[i, keep]), np.log(xn[i, keep]), 1)
        r = np.corrcoef(np.log(y[i, keep]), np.log(xn[i, keep]))[0, 1]
        np.testing.assert_allclose([fit.alpha[i], fit.intercept[i], fit.r2[i]], [slope, icpt, r * r], rtol=1e-10)
        assert int(fit.count[i]) == keep.sum()
    with pytest.raises(ValueError):
        al.power_law_fit(jnp.ones(4), jnp.ones(4), k=5)


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0])
def test_spectral_power_law_of_commuting_matrices(power):
    rng = np.random.default_rng(8)
    v = haar(rng, 8)
    lam_g = np.geomspace(1.0, 0.05, 8)
    g = (v * lam_g) @ v.T
    h = (v * 2.0 * lam_g ** power) @ v.T
    for pairing in ("rank", "basis"):
        fit = al.spectral_power_law(jnp.asarray(h, jnp.float32), jnp.asarray(g, jnp.float32), k=6, pairing=pairing)
        np.testing.assert_allclose(float(fit.alpha), power, atol=2e-3)
        assert float(fit.r2) > 0.9999
    # rotate h's basis: rank pairing cannot tell, basis pairing loses the law
    w = haar(rng, 8)
    h_rot = w @ h @ w.T
    rank = al.spectral_power_law(jnp.asarray(h_rot, jnp.float32), jnp.asarray(g, jnp.float32), k=6, pairing="rank")
    basis = al.spectral_power_law(jnp.asarray(h_rot, jnp.float32), jnp.asarray(g, jnp.float32), k=6, pairing="basis")
    np.testing.assert_allclose(float(rank.alpha), power, atol=2e-3)
    assert float(basis.r2) < 0.9 or abs(float(basis.alpha) - power) > 0.3


def test_fdt_fit_recovers_a_linear_relation():
    rng = np.random.default_rng(9)
    z, g = wishart(rng, 2, 7, 3), wishart(rng, 2, 7, 5)
    h = 2.0 * z + 0.7 * g
    fit = al.fdt_fit(jnp.asarray(h, jnp.float32), jnp.asarray(z, jnp.float32), jnp.asarray(g, jnp.float32))
    nh = np.linalg.norm(h.reshape(2, -1), axis=1)
    want_z = 2.0 * np.linalg.norm(z.reshape(2, -1), axis=1) / nh
    want_g = 0.7 * np.linalg.norm(g.reshape(2, -1), axis=1) / nh
    np.testing.assert_allclose(fit.c1, want_z, rtol=1e-4)
    np.testing.assert_allclose(fit.c2, want_g, rtol=1e-4)
    np.testing.assert_allclose(fit.r2, 1.0, atol=1e-5)
    # a noisy target: numpy's float64 lstsq on the normalized vectors
    hn = h + 0.5 * wishart(rng, 2, 7, 2)
    with jax.enable_x64(True):
        fit = al.fdt_fit(jnp.asarray(hn), jnp.asarray(z), jnp.asarray(g))
    for i in range(2):
        cols = np.stack([z[i].ravel() / np.linalg.norm(z[i]), g[i].ravel() / np.linalg.norm(g[i])], axis=1)
        t = hn[i].ravel() / np.linalg.norm(hn[i])
        coef = np.linalg.lstsq(cols, t, rcond=None)[0]
        r2 = 1 - np.sum((t - cols @ coef) ** 2) / np.sum((t - t.mean()) ** 2)
        np.testing.assert_allclose([fit.c1[i], fit.c2[i], fit.r2[i]], [*coef, r2], rtol=1e-10)


def test_alignment_table_columns():
    rng = np.random.default_rng(10)
    mats = [wishart(rng, 2, 5, 5) for _ in range(3)] + [wishart(rng, 2, 4, 4) for _ in range(3)]
    m = al.LayerMatrices(*[jnp.asarray(x, jnp.float32) for x in mats])
    table = al.alignment_table(jax.random.key(11), m, k=4, num_draws=8)
    for name in al.ALIGNMENTS + ("alpha_hg_b", "fdt_b_r2", "fdt_a_h"):
        for suffix in ("", "_null_mean", "_null_std", "_z", "_pct"):
            chex.assert_shape(table[name + suffix], (2,))
    assert "rank_alpha_hg_b" in table and "rank_alpha_hg_b_null_mean" not in table
    np.testing.assert_allclose(table["hz_b"], al.alignment(m.h_b, m.z_b), rtol=1e-6)
    with pytest.raises(ValueError):
        al.random_basis_null(jax.random.key(0), m, num_draws=1)
