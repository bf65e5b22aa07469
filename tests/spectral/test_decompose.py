"""Singular values/vectors of batched matrices vs float64 LAPACK (numpy)."""

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from spectrax.spectral import Float64Unavailable, decompose
from spectrax.spectral.decompose import METHODS, gram_singular_values, singular_values, svd

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def _ill_conditioned(rng, batch, m, n, cond):
    """Matrices with singular values log-spaced from 1 down to 1/cond, random singular vectors."""
    k = min(m, n)
    u = np.linalg.qr(rng.standard_normal((batch, m, k)))[0]
    v = np.linalg.qr(rng.standard_normal((batch, n, k)))[0]
    s = np.logspace(0.0, -np.log10(cond), k)
    return np.einsum("bik,k,bjk->bij", u, s, v)


def _ref_sv(x):
    return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(2, 3, 8, 40), (3, 40, 8), (7, 7)])
def test_singular_values_match_float64_reference(method, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    s = np.asarray(singular_values(x, method=method))
    ref = _ref_sv(x)
    assert s.shape == ref.shape and s.dtype == np.float32
    assert np.all(np.diff(s, axis=-1) <= 0), "descending"
    smax = ref[..., :1]
    assert np.all(np.abs(s - ref) < 8 * EPS32 * smax)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(2, 6, 30), (30, 6)])
def test_svd_factors_reconstruct_and_are_orthonormal(method, shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    out = svd(x, method=method)
    k = min(shape[-2:])
    assert out.u.shape == shape[:-1] + (k,)
    assert out.v.shape == shape[:-2] + (shape[-1], k)
    recon = np.einsum("...ik,...k,...jk->...ij", out.u, out.s, out.v)
    np.testing.assert_allclose(recon, x, atol=2e-5)
    eye = np.eye(k)
    np.testing.assert_allclose(np.einsum("...ik,...il->...kl", out.u, out.u), np.broadcast_to(eye, out.s.shape[:-1] + (k, k)), atol=2e-5)
    np.testing.assert_allclose(np.einsum("...ik,...il->...kl", out.v, out.v), np.broadcast_to(eye, out.s.shape[:-1] + (k, k)), atol=2e-5)


def test_sign_convention_is_deterministic_across_methods():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5, 24)).astype(np.float32)
    ref = svd(x, method="svd")
    # the largest-|entry| of every u column is positive
    u = np.asarray(ref.u)
    idx = np.argmax(np.abs(u), axis=-2)
    assert np.all(np.take_along_axis(u, idx[..., None, :], axis=-2) > 0)
    # so the vectors agree entry by entry, not just up to sign, with numpy's (sign-fixed) ones
    nu, ns, nvh = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    sign = np.sign(np.take_along_axis(nu, np.argmax(np.abs(nu), axis=-2)[..., None, :], axis=-2))
    for method in ("qr", "cholqr", "gram"):
        out = svd(x, method=method)
        np.testing.assert_allclose(out.u, nu * sign, atol=1e-4)
        np.testing.assert_allclose(out.v, np.swapaxes(nvh, -1, -2) * sign, atol=1e-4)


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
def test_low_precision_inputs_are_upcast(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 8, 64)).astype(dtype)
    exact = _ref_sv(x.astype(np.float64))  # singular values of the rounded input itself
    for method in ("qr", "svd"):
        s = singular_values(jnp.asarray(x), method=method)
        assert s.dtype == jnp.float32
        np.testing.assert_allclose(s, exact, rtol=2e-6 * 64, atol=0)
    assert svd(jnp.asarray(x)).u.dtype == jnp.float32


def test_ill_conditioned_qr_accurate_gram_documented_failure():
    """cond 1e4 in float32: qr/svd keep every singular value to O(eps * sigma_max); the Gram method
    squares the condition number (relative error ~ eps * cond^2) and loses the small ones; in
    float64 the Gram method is fine."""
    rng = np.random.default_rng(5)
    x = _ill_conditioned(rng, 2, 48, 256, cond=1e4)
    x32 = x.astype(np.float32)
    ref = _ref_sv(x32)
    for method in ("qr", "svd"):
        s = np.asarray(singular_values(x32, method=method), np.float64)
        assert np.max(np.abs(s - ref)) < 8 * EPS32 * ref[..., 0].max()
        assert np.max(np.abs(s - ref) / ref) < 1e-3
    gram = np.asarray(singular_values(x32, method="gram"), np.float64)
    rel = np.abs(gram - ref) / ref
    assert rel[..., :8].max() < 1e-5, "the top of the spectrum is fine"
    assert rel[..., -1].min() > 0.1, "the smallest singular values are lost in float32"
    with jax.enable_x64(True):
        s64 = np.asarray(singular_values(jnp.asarray(x, jnp.float64), method="gram"))
        assert s64.dtype == np.float64
        np.testing.assert_allclose(s64, _ref_sv(x), rtol=1e-7)


@pytest.mark.parametrize("cond, fast", [(1.0, True), (1e2, True), (2e3, True), (1e5, False)])
def test_cholqr_is_as_accurate_as_qr_on_both_of_its_paths(cond, fast):
    """CholeskyQR2 (the default) keeps Householder QR's O(eps * sigma_max) error where it runs, and
    hands the batch to Householder QR where its Cholesky factorization would break down."""
    rng = np.random.default_rng(int(cond))
    x = _ill_conditioned(rng, 3, 32, 700, cond).astype(np.float32)
    good = np.asarray(decompose._cholesky_lq(jnp.asarray(x))[3])
    assert np.all(good) == fast and (fast or not np.any(good))
    ref = _ref_sv(x)
    qr_err = np.max(np.abs(np.asarray(singular_values(x, method="qr"), np.float64) - ref))
    for y in (x, np.swapaxes(x, -1, -2)):   # wide and tall
        s = np.asarray(singular_values(y, method="cholqr"), np.float64)
        err = np.max(np.abs(s - ref))
        assert err < 8 * EPS32 * ref[..., 0].max()
        assert err < 4 * qr_err + EPS32 * ref[..., 0].max()
        out = svd(y, method="cholqr")
        np.testing.assert_allclose(out.s, s, rtol=0, atol=16 * EPS32 * ref[..., 0].max())
        recon = np.einsum("...ik,...k,...jk->...ij", out.u, out.s, out.v)
        np.testing.assert_allclose(recon, y, atol=2e-5)
        np.testing.assert_allclose(np.einsum("...ik,...il->...kl", out.v, out.v),
                                   np.broadcast_to(np.eye(32), (3, 32, 32)), atol=2e-5)


def test_cholqr_under_vmap_and_map_falls_back_only_where_needed():
    """A vmapped or lax.mapped call decomposes the same matrices as the plain call: one
    ill-conditioned slice sends its batch to Householder QR, and the answer does not change."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 3, 16, 200)).astype(np.float32)
    x[2, 1] = _ill_conditioned(rng, 1, 16, 200, 1e6)[0]
    plain = np.asarray(singular_values(x))
    # Two float32 runs of the same path differ by a few ulp of sigma_max (BLAS blocking differs
    # with the batch layout); the wrong path (CholeskyQR2 on the cond-1e6 slice) would be off by
    # ~sqrt(eps) sigma_max, a thousand times more.
    same = dict(rtol=1e-6, atol=2 * EPS32 * np.abs(plain).max())
    np.testing.assert_allclose(jax.vmap(singular_values)(x), plain, **same)
    np.testing.assert_allclose(singular_values(x, batch_size=5), plain, **same)
    vectors = jax.vmap(svd)(x)
    np.testing.assert_allclose(vectors.s, plain, **same)
    np.testing.assert_allclose(np.abs(vectors.u), np.abs(svd(x).u), atol=1e-4)
    np.testing.assert_allclose(plain, _ref_sv(x), atol=8 * EPS32 * np.abs(plain).max())


@pytest.mark.parametrize("method, shape, cond", [("cholqr", (3, 12, 90), 10.0), ("cholqr", (3, 12, 90), 1e6),
                                                   ("qr", (3, 12, 90), 10.0), ("cholqr", (2, 30, 9), 10.0)])
def test_lq_factors_the_rows(method, shape, cond):
    """a = l @ t @ q1 with l lower-triangular and t @ q1 orthonormal rows, on CholeskyQR2's fast
    path, its Householder fallback (cond 1e6), Householder itself, and a tall input."""
    rng = np.random.default_rng(13)
    a = _ill_conditioned(rng, *shape, cond).astype(np.float32)
    f = decompose.lq(a, method=method)
    l, t, q1 = (np.asarray(y, np.float64) for y in (f.l, f.t, f.q1))
    r = min(shape[-2:])
    assert l.shape == shape[:-1] + (r,) and q1.shape == (shape[0], r, shape[-1]) and np.all(f.ok)
    np.testing.assert_array_equal(np.triu(l, 1), 0.0)
    q = t @ q1
    np.testing.assert_allclose(q @ np.swapaxes(q, -1, -2), np.broadcast_to(np.eye(r), (shape[0], r, r)), atol=1e-5)
    np.testing.assert_allclose(l @ q, a, atol=1e-5 * np.abs(a).max())
    bad = a.copy()
    bad[1, 0, 0] = np.nan
    g = decompose.lq(bad, method=method)
    assert list(np.asarray(g.ok)) == [True, False, True][: shape[0]] and not np.asarray(g.l)[1].any()


def test_orthogonal_invariance():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((10, 40))
    q1 = np.linalg.qr(rng.standard_normal((10, 10)))[0]
    q2 = np.linalg.qr(rng.standard_normal((40, 40)))[0]
    a = singular_values(x.astype(np.float32))
    b = singular_values((q1 @ x @ q2).astype(np.float32))
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_nan_inf_and_zero_matrices_are_flagged_not_raised(method):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 6, 20)).astype(np.float32)
    x[1, 2, 3] = np.nan
    x[2, 0, 0] = np.inf
    x[3] = 0.0
    s = np.asarray(singular_values(x, method=method))
    assert np.all(np.isnan(s[1])) and np.all(np.isnan(s[2]))
    np.testing.assert_array_equal(s[3], 0.0)
    np.testing.assert_allclose(s[0], _ref_sv(x[0]), rtol=1e-5)
    out = svd(x, method=method)
    assert np.all(np.isnan(out.u[1])) and np.all(np.isnan(out.v[2]))
    assert np.all(np.isfinite(out.u[0])) and np.all(np.isfinite(out.v[3]))


def test_batch_size_gives_the_same_result():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 5, 6, 30)).astype(np.float32)
    np.testing.assert_allclose(singular_values(x, batch_size=3), singular_values(x), rtol=1e-6)
    a, b = svd(x, batch_size=4), svd(x)
    np.testing.assert_allclose(a.u, b.u, atol=1e-6)


def test_compiles_once_per_shape():
    rng = np.random.default_rng(9)
    layers = [rng.standard_normal((4, 8, 32)).astype(np.float32) for _ in range(4)]
    chex.clear_trace_counter()
    kernel = jax.jit(
        chex.assert_max_traces(decompose.singular_values.__wrapped__, n=1),
        static_argnames=("method", "batch_size"),
    )
    for x in layers:
        kernel(x, method="qr")
    before = decompose.svd._cache_size()
    for x in layers:
        svd(x)
    assert decompose.svd._cache_size() - before <= 1


def test_refuses_what_it_does_not_understand():
    with pytest.raises(TypeError):
        singular_values(np.ones((3, 4), np.int32))
    with pytest.raises(ValueError):
        singular_values(np.ones((3, 4), np.float32), method="lanczos")
    with pytest.raises(ValueError):
        singular_values(np.ones((4,), np.float32))


def _gram_bound(x64, ref):
    """The documented bound of `gram_singular_values`: `eps64 (m ||x||_F^2 + k sigma_max^2) / sigma_i`,
    plus the float32 rounding of the result."""
    m, n = x64.shape[-2:]
    frobenius = np.sum(x64 ** 2, axis=(-2, -1))[..., None]
    return EPS64 * (max(m, n) * frobenius + min(m, n) * ref[..., :1] ** 2) / ref + EPS32 * ref


@pytest.mark.parametrize("shape", [(3, 60, 200), (2, 300, 70), (50, 50)])
@pytest.mark.parametrize("cond", [1.0, 1e3, 1e5])
def test_gram_singular_values_are_within_their_documented_bound(shape, cond):
    """Fresh random matrices (singular values log-spaced down to 1/cond, so 1 is a Gaussian-like
    spectrum), rounded to float32 as weights are, against numpy's float64 SVD of the same input."""
    rng = np.random.default_rng()  # fresh inputs each run: the bound must hold for any
    batch = shape[:-2] or (1,)
    x = _ill_conditioned(rng, int(np.prod(batch)), *shape[-2:], cond).reshape(shape).astype(np.float32)
    if cond == 1.0:
        x = rng.standard_normal(shape).astype(np.float32)
    ref = _ref_sv(x)
    s = np.asarray(gram_singular_values(x))
    assert s.shape == ref.shape and s.dtype == np.float32 and np.all(np.diff(s, axis=-1) <= 0)
    assert np.all(np.abs(s - ref) <= _gram_bound(np.asarray(x, np.float64), ref))
    if cond >= 1e5:  # the bound has teeth: the same route in float32 breaks it
        s32 = np.asarray(singular_values(x, method="gram"))
        assert np.any(np.abs(s32 - ref) > _gram_bound(np.asarray(x, np.float64), ref))


def test_gram_singular_values_leave_the_process_as_it_was_and_compile_once():
    rng = np.random.default_rng(4)
    assert not jax.config.jax_enable_x64
    chex.clear_trace_counter()
    kernel = jax.jit(chex.assert_max_traces(decompose._gram_values64.__wrapped__, n=1),
                     static_argnames=("batch_size", "out_dtype"))
    before = decompose._gram_values64._cache_size()
    for _ in range(3):
        x = rng.standard_normal((2, 9, 31)).astype(np.float32)
        with jax.enable_x64(True):
            np.testing.assert_array_equal(kernel(x, None, jnp.float32), gram_singular_values(x))
    assert decompose._gram_values64._cache_size() - before == 1
    assert not jax.config.jax_enable_x64 and gram_singular_values(x).dtype == jnp.float32
    bad = x.copy()
    bad[1, 0, 0] = np.nan
    out = np.asarray(gram_singular_values(bad))
    assert np.all(np.isnan(out[1])) and np.allclose(out[0], _ref_sv(x[0]), rtol=1e-5)
    assert np.all(np.asarray(gram_singular_values(np.zeros((4, 6), np.float32))) == 0)
    with jax.enable_x64(True):
        assert gram_singular_values(x.astype(np.float64)).dtype == jnp.float64  # the caller has x64: kept


def test_gram_singular_values_without_float64_fall_back_to_float32_householder(monkeypatch):
    x = np.random.default_rng(6).standard_normal((2, 7, 19)).astype(np.float32)
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    with pytest.warns(Float64Unavailable, match="TPUs have no float64"):
        s = gram_singular_values(x)
    assert s.dtype == jnp.float32
    np.testing.assert_array_equal(s, singular_values(x, method="qr"))
