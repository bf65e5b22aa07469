"""Bundled per-head statistics vs a float64 numpy implementation of docs/statistics.md §1."""

import numpy as np
import pytest

from spectrax.spectral import nulls
from spectrax.spectral.pairs import (
    PAIR_STATISTICS,
    SPECTRUM_STATISTICS,
    exact_pair_nulls,
    gqa_pair_statistics,
    pair_statistics,
    singular_value_statistics,
    spectrum_statistics,
)


def _np_pair(a, b, k):
    ua, sa, vha = np.linalg.svd(a.astype(np.float64), full_matrices=False)
    ub, sb, vhb = np.linalg.svd(b.astype(np.float64), full_matrices=False)
    va, vb = vha.T, vhb.T
    alpha = sa @ sb / (sb @ sb)
    return {
        "pearson": np.corrcoef(sa, sb)[0, 1],
        "ssr": np.mean(np.abs(sa / np.linalg.norm(sa) - sb / np.linalg.norm(sb))),
        "alpha": alpha,
        "alpha_mse": np.mean((sa - alpha * sb) ** 2),
        "cos_u": np.mean(np.abs(np.sum(ua * ub, 0))),
        "cos_v": np.mean(np.abs(np.sum(va * vb, 0))),
        "grassmann": np.mean(np.linalg.svd(va[:, :k].T @ vb[:, :k], compute_uv=False) ** 2),
    }


def test_gqa_pair_statistics_match_per_head_numpy():
    rng = np.random.default_rng(60)
    L, H, KV, D, E, k = 2, 6, 3, 5, 24, 3
    q = rng.standard_normal((L, H, D, E)).astype(np.float32)
    kv = rng.standard_normal((L, KV, D, E)).astype(np.float32)
    got = gqa_pair_statistics(q, kv, grassmann_k=k)
    assert set(got) == set(PAIR_STATISTICS)
    for name in PAIR_STATISTICS:
        assert got[name].shape == (L, H)
    for layer in range(L):
        for h in range(H):
            ref = _np_pair(q[layer, h], kv[layer, h // (H // KV)], k)
            for name in PAIR_STATISTICS:
                np.testing.assert_allclose(got[name][layer, h], ref[name], rtol=2e-4, atol=1e-6, err_msg=name)
    direct = pair_statistics(q[:, :2], kv[:, :1], grassmann_k=k)          # explicit broadcasting
    np.testing.assert_allclose(direct["cos_v"], got["cos_v"][:, :2], rtol=1e-6)
    with pytest.raises(ValueError):
        gqa_pair_statistics(q[0], kv)


def test_spectrum_statistics_and_exact_pair_nulls():
    rng = np.random.default_rng(61)
    w = rng.standard_normal((3, 10, 30)).astype(np.float32)
    got = spectrum_statistics(w)
    assert set(got) == set(SPECTRUM_STATISTICS)
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(got["sigma_max"], s[:, 0], rtol=1e-5)
    np.testing.assert_allclose(got["stable_rank"], (s**2).sum(-1) / s[:, 0] ** 2, rtol=1e-5)
    from_s = singular_value_statistics(s.astype(np.float32))
    for name in SPECTRUM_STATISTICS:
        np.testing.assert_allclose(got[name], from_s[name], rtol=1e-5, err_msg=name)
    ex = exact_pair_nulls((8, 64), grassmann_k=4)
    assert float(ex["cos_u"].mean) == pytest.approx(float(nulls.expected_abs_cos(8)))
    assert float(ex["cos_v"].mean) == pytest.approx(float(nulls.expected_abs_cos(64)))
    assert float(ex["grassmann"].mean) == pytest.approx(4 / 64)
    cols = nulls.null_columns({"cos_v": np.full((2, 4), 0.1, np.float32)}, ex)
    assert cols["cos_v_z"].shape == (2, 4)
