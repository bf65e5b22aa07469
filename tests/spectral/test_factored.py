"""Factored QK/OV kernels vs the explicit E x E products in float64 numpy."""

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from spectrax.spectral import decompose, factored
from spectrax.spectral.factored import (
    factored_singular_values,
    factored_svd,
    ov_circuit_svd,
    qk_kernel_singular_values,
    qk_kernel_svd,
)
from spectrax.spectral.gqa import gqa_pair, group_size, kv_head_index


def _abs_cos_columns(x, y):
    """|<x_i, y_i>| per column after normalizing, for comparing vectors up to sign."""
    x = x / np.linalg.norm(x, axis=-2, keepdims=True)
    y = y / np.linalg.norm(y, axis=-2, keepdims=True)
    return np.abs(np.sum(x * y, axis=-2))


@pytest.mark.parametrize("d,m,n", [(4, 12, 12), (5, 9, 14), (6, 4, 10)])
def test_factored_spectrum_matches_explicit_product(d, m, n):
    rng = np.random.default_rng(10)
    a = rng.standard_normal((3, d, m))
    b = rng.standard_normal((3, d, n))
    prod = np.swapaxes(a, -1, -2) @ b                     # (3, m, n), the thing never formed
    ref = np.linalg.svd(prod, compute_uv=False)
    r = min(d, m, n)
    s = np.asarray(factored_singular_values(a.astype(np.float32), b.astype(np.float32)))
    assert s.shape == (3, r)
    np.testing.assert_allclose(s, ref[..., :r], rtol=1e-5, atol=1e-5 * ref.max())
    np.testing.assert_allclose(ref[..., r:], 0.0, atol=1e-10 * ref.max())

    k = r - 1
    out = factored_svd(a.astype(np.float32), b.astype(np.float32), top_k=k)
    np.testing.assert_allclose(out.s, s, rtol=1e-6)
    assert out.u.shape == (3, m, k) and out.v.shape == (3, n, k)
    pu, _, pvh = np.linalg.svd(prod)
    np.testing.assert_allclose(_abs_cos_columns(np.asarray(out.u, np.float64), pu[..., :k]), 1.0, atol=1e-4)
    np.testing.assert_allclose(_abs_cos_columns(np.asarray(out.v, np.float64), np.swapaxes(pvh, -1, -2)[..., :k]), 1.0, atol=1e-4)
    # u^T (A^T B) v = diag(s): the pairing of left and right vectors (and their signs) is right
    core = np.einsum("bmk,bmn,bnl->bkl", out.u, prod, out.v)
    np.testing.assert_allclose(core, np.einsum("bk,kl->bkl", out.s[:, :k], np.eye(k)), atol=1e-4 * ref.max())


def test_ill_conditioned_factors_take_the_householder_path_and_stay_accurate():
    """cond(a) 1e6 breaks CholeskyQR2's Cholesky (float32): its batch is factored by Householder QR."""
    rng = np.random.default_rng(12)
    u = np.linalg.qr(rng.standard_normal((2, 8, 8)))[0]
    v = np.linalg.qr(rng.standard_normal((2, 60, 8)))[0]
    a = np.einsum("bik,k,bjk->bij", u, np.logspace(0, -6, 8), v).astype(np.float32)
    b = rng.standard_normal((2, 8, 50)).astype(np.float32)
    assert not np.any(np.asarray(decompose._cholesky_lq(jnp.asarray(a))[3]))  # no fast path here
    prod = np.swapaxes(a.astype(np.float64), -1, -2) @ b.astype(np.float64)
    ref = np.linalg.svd(prod, compute_uv=False)[..., :8]
    s = np.asarray(factored_singular_values(a, b), np.float64)
    assert np.max(np.abs(s - ref)) < 32 * np.finfo(np.float32).eps * ref.max()
    out = factored_svd(a, b)
    core = np.einsum("bmk,bmn,bnl->bkl", out.u, prod, out.v)
    np.testing.assert_allclose(core, np.einsum("bk,kl->bkl", out.s, np.eye(8)), atol=1e-4 * ref.max())


def test_qk_kernel_pairs_each_query_head_with_its_kv_head():
    rng = np.random.default_rng(11)
    L, H, KV, D, E = 2, 6, 2, 4, 16
    q = rng.standard_normal((L, H, D, E)).astype(np.float32)
    k = rng.standard_normal((L, KV, D, E)).astype(np.float32)
    out = qk_kernel_svd(q, k, top_k=3)
    assert out.s.shape == (L, H, D) and out.query.shape == (L, H, E, 3) and out.key.shape == (L, H, E, 3)
    sv = qk_kernel_singular_values(q, k)
    for layer in range(L):
        for h in range(H):
            g = h // (H // KV)
            kernel = q[layer, h].astype(np.float64).T @ k[layer, g].astype(np.float64)
            u, s, vh = np.linalg.svd(kernel)
            np.testing.assert_allclose(out.s[layer, h], s[:D], rtol=1e-5, atol=1e-5 * s[0])
            np.testing.assert_allclose(sv[layer, h], s[:D], rtol=1e-5, atol=1e-5 * s[0])
            np.testing.assert_allclose(_abs_cos_columns(np.asarray(out.query[layer, h], np.float64), u[:, :3]), 1.0, atol=1e-4)
            np.testing.assert_allclose(_abs_cos_columns(np.asarray(out.key[layer, h], np.float64), vh[:3].T), 1.0, atol=1e-4)


def test_ov_circuit_matches_explicit_product():
    rng = np.random.default_rng(12)
    H, KV, D, E = 4, 1, 3, 10
    o = rng.standard_normal((H, D, E)).astype(np.float32)
    v = rng.standard_normal((KV, D, E)).astype(np.float32)
    out = ov_circuit_svd(o, v, top_k=2)
    for h in range(H):
        circuit = o[h].astype(np.float64).T @ v[0].astype(np.float64)   # W_O,h W_V
        u, s, vh = np.linalg.svd(circuit)
        np.testing.assert_allclose(out.s[h], s[:D], rtol=1e-5)
        np.testing.assert_allclose(_abs_cos_columns(np.asarray(out.output[h], np.float64), u[:, :2]), 1.0, atol=1e-4)
        np.testing.assert_allclose(_abs_cos_columns(np.asarray(out.input[h], np.float64), vh[:2].T), 1.0, atol=1e-4)


def test_bf16_inputs_and_nan_heads():
    rng = np.random.default_rng(13)
    q = rng.standard_normal((4, 4, 12)).astype(ml_dtypes.bfloat16)
    k = rng.standard_normal((2, 4, 12)).astype(ml_dtypes.bfloat16)
    s = qk_kernel_singular_values(jnp.asarray(q), jnp.asarray(k))
    assert s.dtype == jnp.float32
    ref = np.linalg.svd(q[1].astype(np.float64).T @ k[0].astype(np.float64), compute_uv=False)[:4]
    np.testing.assert_allclose(s[1], ref, rtol=1e-5)
    k = k.astype(np.float32)
    k[1, 0, 0] = np.nan                      # KV head 1 serves query heads 2 and 3
    s = np.asarray(qk_kernel_singular_values(q.astype(np.float32), k))
    assert np.all(np.isnan(s[2:])) and np.all(np.isfinite(s[:2]))


def test_gqa_pair_never_repeats_kv_heads_and_merges_outputs():
    seen = {}

    def fn(qs, ks):
        seen["q"], seen["k"] = qs.shape, ks.shape
        return {"pair": qs[..., 0] * ks[..., 0], "kv_only": ks[..., 1] + 0.0 * ks[..., 0]}

    qs = jnp.arange(2 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 3)     # (layers, H, n)
    ks = jnp.arange(2 * 2 * 3, dtype=jnp.float32).reshape(2, 2, 3) + 1  # (layers, KV, n)
    out = gqa_pair(fn, qs, ks, axis=1)
    assert seen == {"q": (2, 2, 4, 3), "k": (2, 2, 1, 3)}
    g = kv_head_index(8, 2)
    np.testing.assert_array_equal(g, [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(out["pair"], qs[..., 0] * ks[:, g, 0])
    np.testing.assert_array_equal(out["kv_only"], ks[:, g, 1])
    with pytest.raises(ValueError):
        group_size(6, 4)
    with pytest.raises(ValueError):
        qk_kernel_svd(jnp.zeros((6, 4, 8)), jnp.zeros((4, 4, 8)))


def test_qk_kernel_compiles_once_across_layers():
    rng = np.random.default_rng(14)
    layers = [
        (rng.standard_normal((4, 3, 16)).astype(np.float32), rng.standard_normal((2, 3, 16)).astype(np.float32))
        for _ in range(3)
    ]
    chex.clear_trace_counter()
    kernel = jax.jit(chex.assert_max_traces(factored.qk_kernel_svd.__wrapped__, n=1), static_argnames="top_k")
    for q, k in layers:
        kernel(q, k, top_k=2)
    before = factored.qk_kernel_svd._cache_size()
    for q, k in layers:
        qk_kernel_svd(q, k, top_k=2)
    assert factored.qk_kernel_svd._cache_size() - before <= 1
