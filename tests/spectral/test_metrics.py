"""Statistics of docs/statistics.md §1-§3 vs float64 numpy formulas, plus their invariances and bounds."""

import jax.numpy as jnp
import numpy as np
import pytest

from spectrax.spectral import metrics as mt


def _spectra(rng, shape):
    return np.sort(np.abs(rng.standard_normal(shape)) + 0.1, axis=-1)[..., ::-1].copy()


def _orthonormal(rng, *shape):
    return np.linalg.qr(rng.standard_normal(shape))[0]


def test_pearson_ssr_alpha_match_numpy_and_broadcast():
    rng = np.random.default_rng(20)
    a = _spectra(rng, (3, 4, 16))
    b = _spectra(rng, (3, 1, 16))           # broadcast like a KV head against its query group
    bb = np.broadcast_to(b, a.shape)
    ref_r = np.array([[np.corrcoef(x, y)[0, 1] for x, y in zip(ra, rb)] for ra, rb in zip(a, bb)])
    ref_ssr = np.mean(np.abs(a / np.linalg.norm(a, axis=-1, keepdims=True) - bb / np.linalg.norm(bb, axis=-1, keepdims=True)), -1)
    alpha = np.sum(a * bb, -1) / np.sum(bb * bb, -1)
    mse = np.mean((a - alpha[..., None] * bb) ** 2, -1)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_allclose(mt.pearson(a32, b32), ref_r, rtol=1e-5)
    np.testing.assert_allclose(mt.ssr(a32, b32), ref_ssr, rtol=1e-5)
    fit = mt.scale_fit(a32, b32)
    np.testing.assert_allclose(fit.alpha, alpha, rtol=1e-5)
    np.testing.assert_allclose(fit.mse, mse, rtol=1e-4)


def test_scale_invariance_and_exact_cases():
    rng = np.random.default_rng(21)
    a = _spectra(rng, (5, 32)).astype(np.float32)
    b = _spectra(rng, (5, 32)).astype(np.float32)
    np.testing.assert_allclose(mt.pearson(3.0 * a, 0.01 * b), mt.pearson(a, b), rtol=1e-5)
    np.testing.assert_allclose(mt.ssr(3.0 * a, 0.01 * b), mt.ssr(a, b), rtol=1e-5)
    np.testing.assert_allclose(mt.effective_rank(7.0 * a), mt.effective_rank(a), rtol=1e-5)
    np.testing.assert_allclose(mt.ssr(a, 2.5 * a), 0.0, atol=1e-7)
    np.testing.assert_allclose(mt.pearson(a, 2.5 * a), 1.0, rtol=1e-6)
    fit = mt.scale_fit(2.5 * a, a)
    np.testing.assert_allclose(fit.alpha, 2.5, rtol=1e-6)
    np.testing.assert_allclose(fit.mse, 0.0, atol=1e-10)


def test_undefined_statistics_are_nan_not_errors():
    const = jnp.ones((2, 8))
    zero = jnp.zeros((2, 8))
    x = jnp.linspace(1.0, 0.1, 8)
    assert np.all(np.isnan(mt.pearson(const, x)))
    assert np.all(np.isnan(mt.ssr(zero, x)))
    assert np.all(np.isnan(mt.scale_fit(x, zero).alpha))
    for fn in (mt.condition_number, mt.effective_rank, mt.max_mean, mt.stable_rank):
        assert np.all(np.isnan(fn(zero))), fn.__name__
        assert np.all(np.isnan(fn(jnp.full((8,), jnp.nan)))), fn.__name__
    assert np.isnan(mt.effective_rank(zero, squared=True)).all()
    assert np.isnan(mt.projector_energy(jnp.zeros((3, 4)), jnp.eye(4)[:, :2]))


def test_mean_abs_cos_matches_numpy_and_ignores_signs():
    rng = np.random.default_rng(22)
    x = _orthonormal(rng, 2, 3, 20, 5)
    y = _orthonormal(rng, 2, 3, 20, 5)
    ref = np.mean(np.abs(np.einsum("...dk,...dk->...k", x, y)), -1)
    np.testing.assert_allclose(mt.mean_abs_cos(x.astype(np.float32), y.astype(np.float32)), ref, rtol=1e-5)
    flip = np.array([1, -1, 1, -1, -1], np.float32)
    np.testing.assert_allclose(mt.mean_abs_cos(x.astype(np.float32) * flip, y.astype(np.float32)), ref, rtol=1e-5)
    np.testing.assert_allclose(mt.mean_abs_cos(x.astype(np.float32), x.astype(np.float32)), 1.0, rtol=1e-5)


def test_grassmann_matches_principal_angles_and_is_bounded():
    rng = np.random.default_rng(23)
    a = _orthonormal(rng, 4, 30, 6)
    b = _orthonormal(rng, 4, 30, 6)
    sv = np.linalg.svd(np.swapaxes(a, -1, -2) @ b, compute_uv=False)
    g = np.asarray(mt.grassmann(a.astype(np.float32), b.astype(np.float32)))
    np.testing.assert_allclose(g, np.mean(sv**2, -1), rtol=1e-5)
    assert np.all((g >= 0) & (g <= 1))
    rot = _orthonormal(rng, 6, 6)                     # same subspace, another basis
    np.testing.assert_allclose(mt.grassmann(a.astype(np.float32), (a @ rot).astype(np.float32)), 1.0, rtol=1e-5)
    e = np.eye(30, dtype=np.float32)
    np.testing.assert_allclose(mt.grassmann(e[:, :6], e[:, 6:12]), 0.0, atol=1e-7)
    np.testing.assert_allclose(mt.grassmann(e[:, :6], e[:, 3:5]), 1.0, rtol=1e-6)  # kb < ka: min(ka, kb)
    m = np.asarray(mt.pairwise_grassmann(a.astype(np.float32)))
    assert m.shape == (4, 4)
    np.testing.assert_allclose(np.diag(m), 1.0, rtol=1e-5)
    np.testing.assert_allclose(m, m.T, rtol=1e-5)
    np.testing.assert_allclose(m[0, 1], np.mean(np.linalg.svd(a[0].T @ a[1], compute_uv=False) ** 2), rtol=1e-5)


def test_spectrum_statistics_match_numpy():
    rng = np.random.default_rng(24)
    s = _spectra(rng, (3, 12))
    s[1, -3:] = 0.0                       # rank-deficient: the zeros must not count in cond
    s32 = s.astype(np.float32)
    np.testing.assert_allclose(mt.sigma_max(s32), s[:, 0], rtol=1e-6)
    cond = np.array([row[0] / row[row > 1e-10 * row[0]].min() for row in s])
    np.testing.assert_allclose(mt.condition_number(s32), cond, rtol=1e-5)
    np.testing.assert_allclose(mt.max_mean(s32), s[:, 0] / s.mean(-1), rtol=1e-5)
    np.testing.assert_allclose(mt.stable_rank(s32), (s**2).sum(-1) / s[:, 0] ** 2, rtol=1e-5)
    for squared in (False, True):
        w = s**2 if squared else s
        p = w / w.sum(-1, keepdims=True)
        ref = np.exp(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1))
        e = np.asarray(mt.effective_rank(s32, squared=squared))
        np.testing.assert_allclose(e, ref, rtol=1e-5)
        nonzero = (s > 0).sum(-1)
        assert np.all((e >= 1 - 1e-6) & (e <= nonzero + 1e-4))
    np.testing.assert_allclose(mt.effective_rank(jnp.ones(9)), 9.0, rtol=1e-6)
    np.testing.assert_allclose(mt.effective_rank(jnp.array([2.0, 0, 0])), 1.0, rtol=1e-6)


def test_projector_energy_matches_numpy_and_chance_level():
    rng = np.random.default_rng(25)
    w = rng.standard_normal((2, 40, 64))
    basis = _orthonormal(rng, 2, 64, 8)
    proj = basis @ np.swapaxes(basis, -1, -2)
    ref = np.sum((w @ proj) ** 2, (-2, -1)) / np.sum(w**2, (-2, -1))
    got = np.asarray(mt.projector_energy(w.astype(np.float32), basis.astype(np.float32)))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert np.all(np.abs(got - 8 / 64) < 0.05)           # chance k / E for an unrelated W
    inside = rng.standard_normal((40, 8)) @ basis[0].T   # rows inside the subspace
    np.testing.assert_allclose(mt.projector_energy(inside.astype(np.float32), basis[0].astype(np.float32)), 1.0, rtol=1e-5)
    with pytest.raises(ValueError):
        mt.projector_energy(w[0].astype(np.float32), basis[0, :32].astype(np.float32))
