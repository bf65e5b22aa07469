"""The kernel analysis: statistics equal float64 numpy recomputations, and its nulls hold in law."""

import json
import math

import jax
import ml_dtypes
import numpy as np
import pytest

from spectrax import spectral as sp
from spectrax.analyses import kernel as kn
from tests.conftest import run_on_cpu_devices

# One layer shape, top_k and draw count for most tests: each distinct combination is a compile.
DRAWS, TOP_K = 16, 4


def _layer(rng, H=4, KV=2, D=8, E=32, F=48, dtype=np.float32):
    attn = {"q": rng.standard_normal((H, D, E)).astype(dtype),
            "k": rng.standard_normal((KV, D, E)).astype(dtype),
            "v": rng.standard_normal((KV, D, E)).astype(dtype)}
    mlp = {"gate": rng.standard_normal((F, E)).astype(dtype),
           "up": rng.standard_normal((F, E)).astype(dtype),
           "down": rng.standard_normal((E, F)).astype(dtype)}
    return attn, mlp


def _np_erank(s, squared=False):
    w = s * s if squared else s
    p = w / w.sum()
    p = p[p > 0]
    return np.exp(-np.sum(p * np.log(p)))


def _np_kernel(attn, h, H, KV):
    g = h // (H // KV)
    q = np.asarray(attn["q"][h], np.float64)
    k = np.asarray(attn["k"][g], np.float64)
    return q.T @ k  # (E, E), formed explicitly on purpose


def _projector(basis):
    return basis @ basis.T


# ----------------------------------------------------------------------------- observed statistics


def test_kernel_statistics_and_alignment_match_explicit_numpy_kernel():
    rng = np.random.default_rng(0)
    H, KV, D, E = 4, 2, 8, 32
    attn, mlp = _layer(rng, H, KV, D, E)
    top_k = TOP_K
    cols, bases = kn.kernel_layer(attn, mlp, jax.random.key(0), top_k=top_k, num_draws=DRAWS)
    assert bases.shape == (H, E, top_k) and bases.dtype == np.float32
    np.testing.assert_array_equal(cols["kv_head"], [0, 0, 1, 1])
    gate = np.asarray(mlp["gate"], np.float64)
    for h in range(H):
        _, s, vh = np.linalg.svd(_np_kernel(attn, h, H, KV))
        s = s[:D]  # rank <= D; the rest is rounding noise
        np.testing.assert_allclose(cols["kernel_erank"][h], _np_erank(s), rtol=1e-5)
        np.testing.assert_allclose(cols["kernel_erank_squared"][h], _np_erank(s, True), rtol=1e-5)
        np.testing.assert_allclose(cols["kernel_stable_rank"][h], np.sum(s * s) / s[0] ** 2, rtol=1e-5)
        np.testing.assert_allclose(cols["kernel_sigma_max"][h], s[0], rtol=1e-5)
        key_basis = vh[:top_k].T  # right = key side
        # Subspaces, not vectors: the signs of singular vectors are arbitrary.
        np.testing.assert_allclose(_projector(bases[h].astype(np.float64)), _projector(key_basis), atol=2e-5)
        assert np.linalg.norm(_projector(bases[h].astype(np.float64)) - _projector(_np_query_basis(attn, h, top_k))) > 0.1
        p = _projector(key_basis)
        expected = np.linalg.norm(gate @ p) ** 2 / np.linalg.norm(gate) ** 2
        np.testing.assert_allclose(cols["ffn_alignment"][h], expected, rtol=1e-5)
        np.testing.assert_allclose(cols["ffn_alignment_ratio"][h], expected / (top_k / E), rtol=1e-5)
    assert (cols["finite"] == 1).all()
    assert ((cols["kernel_erank"] >= 1) & (cols["kernel_erank"] <= D)).all()
    assert ((cols["kernel_erank_squared"] >= 1) & (cols["kernel_erank_squared"] <= D)).all()


def _np_query_basis(attn, h, top_k):
    H, KV = attn["q"].shape[0], attn["k"].shape[0]
    u, _, _ = np.linalg.svd(_np_kernel(attn, h, H, KV))
    return u[:, :top_k]


def test_gate_is_preferred_and_up_used_for_non_gated_mlps():
    rng = np.random.default_rng(1)
    attn, mlp = _layer(rng)
    key = jax.random.key(0)
    gated, bases = kn.kernel_layer(attn, mlp, key, top_k=TOP_K, num_draws=DRAWS)
    plain, _ = kn.kernel_layer(attn, {"up": mlp["up"], "down": mlp["down"]}, key, top_k=TOP_K, num_draws=DRAWS)
    for cols, name in ((gated, "gate"), (plain, "up")):
        w = np.asarray(mlp[name], np.float64)
        for h in range(4):
            b = bases[h].astype(np.float64)
            np.testing.assert_allclose(cols["ffn_alignment"][h], np.linalg.norm(w @ b) ** 2 / np.linalg.norm(w) ** 2,
                                       rtol=1e-5)
    assert not np.allclose(gated["ffn_alignment"], plain["ffn_alignment"])
    with pytest.raises(ValueError, match="neither"):
        kn.kernel_layer(attn, {"down": mlp["down"]}, key, num_draws=DRAWS)
    none, _ = kn.kernel_layer(attn, None, key, top_k=TOP_K, num_draws=DRAWS)
    assert np.isnan(none["ffn_alignment"]).all() and np.isfinite(none["kernel_erank"]).all()


def test_top_k_is_clipped_to_head_dim_and_bf16_equals_its_f32_upcast():
    rng = np.random.default_rng(2)
    attn, mlp = _layer(rng)
    attn16 = {m: x.astype(ml_dtypes.bfloat16) for m, x in attn.items()}
    up32 = {m: x.astype(np.float32) for m, x in attn16.items()}
    cols16, b16 = kn.kernel_layer(attn16, mlp, jax.random.key(3), top_k=100, num_draws=DRAWS)
    cols32, b32 = kn.kernel_layer(up32, mlp, jax.random.key(3), top_k=100, num_draws=DRAWS)
    assert b16.shape == (4, 32, 8)  # clipped to D
    np.testing.assert_array_equal(b16, b32)
    # k = D: the subspace is the whole row space of W_K,g; the alignment's chance level is D/E.
    np.testing.assert_allclose(cols16["ffn_alignment_null_mean"], 8 / 32)
    for name in cols32:
        np.testing.assert_array_equal(cols16[name], cols32[name], err_msg=name)


def test_nonfinite_and_zero_heads_give_defined_output():
    rng = np.random.default_rng(3)
    attn, mlp = _layer(rng)
    attn["q"][3, 0, 0] = np.nan
    attn["q"][1] = 0.0  # zero kernel, but finite
    cols, bases = kn.kernel_layer(attn, mlp, jax.random.key(0), top_k=TOP_K, num_draws=DRAWS)
    np.testing.assert_array_equal(cols["finite"], [1, 1, 1, 0])
    for name in ("kernel_erank", "kernel_sigma_max", "kernel_erank_z", "kernel_erank_pct", "ffn_alignment",
                 "ffn_alignment_z", "ffn_alignment_ratio"):
        assert np.isnan(cols[name][3]), name
    assert np.isnan(bases[3]).all()
    # Zero kernel: scale-free statistics and its subspace are undefined, sigma_max is 0.
    assert cols["kernel_sigma_max"][1] == 0
    assert np.isnan(cols["kernel_erank"][1]) and np.isnan(cols["ffn_alignment"][1]) and np.isnan(bases[1]).all()
    healthy = [0, 2]
    for name in ("kernel_erank", "kernel_erank_z", "kernel_sigma_max_z", "ffn_alignment_z"):
        assert np.isfinite(cols[name][healthy]).all(), name
    assert np.isfinite(bases[healthy]).all()
    # A non-finite K head spoils exactly the query heads of its group.
    attn, mlp = _layer(rng)
    attn["k"][1, 2, 3] = np.inf
    cols, bases = kn.kernel_layer(attn, mlp, jax.random.key(0), top_k=TOP_K, num_draws=DRAWS)
    np.testing.assert_array_equal(cols["finite"], [1, 1, 0, 0])
    assert np.isnan(cols["kernel_erank"][2:]).all() and np.isfinite(cols["kernel_erank_z"][:2]).all()


def test_refuses_shapes_it_does_not_understand():
    rng = np.random.default_rng(4)
    attn, mlp = _layer(rng)
    key = jax.random.key(0)
    with pytest.raises(ValueError):
        kn.kernel_layer({"q": attn["q"], "k": attn["k"][:1].repeat(3, 0)}, mlp, key)  # 4 heads over 3
    with pytest.raises(AssertionError):  # chex: a stacked (1, H, D, E) layer is not unstacked
        kn.kernel_layer({"q": attn["q"][None], "k": attn["k"][None]}, mlp, key)
    with pytest.raises(ValueError):
        kn.kernel_layer(attn, {"gate": mlp["gate"][:, :16]}, key)  # wrong hidden size


# ----------------------------------------------------------------------------- kernel null


def _explicit_kernel_draws(rng, n, H, KV, D, E):
    """Statistics of explicitly formed Gaussian kernels A_h^T B_g, W_K shared within a group."""
    a = rng.standard_normal((n, H, D, E))
    b = rng.standard_normal((n, KV, D, E))
    kernels = np.einsum("nhde,nhdf->nhef", a, b[:, sp.kv_head_index(H, KV)])
    s = np.linalg.svd(kernels, compute_uv=False)[..., :D]
    p = s / s.sum(-1, keepdims=True)
    return {"kernel_erank": np.exp(-np.sum(p * np.log(p), -1)), "kernel_sigma_max": s[..., 0]}


def _corr(x, i, j):
    return np.corrcoef(x[:, i], x[:, j])[0, 1]


def test_bartlett_kernel_null_matches_explicit_gaussian_products_and_shares_key_factor():
    """Exact in law, including the correlation that a shared W_K induces between heads of a group.

    D close to E makes the law far from degenerate: an off-by-one in the chi2 degrees of freedom
    moves the mean erank by ~0.15, 5x the tolerance used here.
    """
    H, KV, D, E, n = 4, 2, 4, 6, 1500
    ones = np.ones((H, D, E), np.float32), np.ones((KV, D, E), np.float32)  # unit RMS
    null = kn.kernel_null(jax.random.key(1), *ones, num_draws=n, batch_size=250)
    explicit = _explicit_kernel_draws(np.random.default_rng(5), n, H, KV, D, E)
    for name, tol in (("kernel_erank", 0.03), ("kernel_sigma_max", 0.3)):
        fast = np.asarray(null[name].draws, np.float64)
        ref = explicit[name]
        assert fast.shape == (n, H)
        np.testing.assert_allclose(fast.mean(), ref.mean(), atol=tol, err_msg=name)
        np.testing.assert_allclose(np.quantile(fast, [0.1, 0.5, 0.9]), np.quantile(ref, [0.1, 0.5, 0.9]),
                                   atol=2 * tol, err_msg=name)
        np.testing.assert_allclose(fast.std(), ref.std(), rtol=0.08, err_msg=name)
    fast = np.asarray(null["kernel_sigma_max"].draws, np.float64)
    ref = explicit["kernel_sigma_max"]
    for i, j in ((0, 1), (2, 3)):  # same KV head: correlated through the shared W_K
        assert _corr(fast, i, j) > 0.15 and abs(_corr(fast, i, j) - _corr(ref, i, j)) < 0.12
    for i, j in ((0, 2), (1, 3)):  # different KV heads: independent
        assert abs(_corr(fast, i, j)) < 0.1


def test_key_factor_is_drawn_per_kv_head():
    scale_q = jax.numpy.ones(6)
    scale_k = jax.numpy.asarray([1.0, 2.0, 3.0])
    factors = jax.jit(kn._kernel_factors, static_argnums=(3, 4))
    rq, rk = factors(jax.random.key(0), scale_q, scale_k, 5, 9)
    rq, rk = np.asarray(rq), np.asarray(rk)
    assert rk.shape == (6, 5, 5)
    for h in range(6):
        np.testing.assert_array_equal(rk[h], rk[2 * (h // 2)])  # H // KV = 2 heads per group
    assert not np.allclose(rk[0], rk[2] / 2) and not np.allclose(rq[0], rq[1])
    assert np.allclose(np.tril(rk[0], -1), 0) and (np.diag(rk[0]) > 0).all()


def test_kernel_null_scales_with_weight_rms_and_centres_gaussian_weights():
    rng = np.random.default_rng(6)
    attn, mlp = _layer(rng)
    key = jax.random.key(7)
    base = kn.kernel_null(key, attn["q"], attn["k"], num_draws=DRAWS)
    scaled = kn.kernel_null(key, 3 * attn["q"], attn["k"], num_draws=DRAWS)
    np.testing.assert_allclose(scaled["kernel_sigma_max"].mean, 3 * base["kernel_sigma_max"].mean, rtol=1e-5)
    np.testing.assert_allclose(scaled["kernel_erank"].mean, base["kernel_erank"].mean, rtol=1e-5)
    # Gaussian weights: z-scores centred; a low-rank W_Q: erank far below the null.
    rows = [kn.kernel_layer(*_layer(np.random.default_rng(10 + i)), jax.random.key(i), top_k=TOP_K,
                            num_draws=DRAWS)[0] for i in range(6)]
    for name in ("kernel_erank", "kernel_sigma_max", "kernel_stable_rank", "ffn_alignment"):
        z = np.concatenate([r[f"{name}_z"] for r in rows])
        assert abs(z.mean()) < 0.8 and 0.4 < z.std() < 2.0, name
    low = dict(attn, q=_low_rank_q(rng, 2))
    cols, _ = kn.kernel_layer(low, mlp, key, top_k=TOP_K, num_draws=DRAWS)
    assert (cols["kernel_erank"] < 2.0 + 1e-4).all() and (cols["kernel_erank_z"] < -5).all()


def _low_rank_q(rng, rank, H=4, D=8, E=32):
    return np.einsum("hdr,hre->hde", rng.standard_normal((H, D, rank)),
                     rng.standard_normal((H, rank, E))).astype(np.float32)


def test_null_compiles_once_per_shape():
    rng = np.random.default_rng(8)
    kernels = (kn._observe, kn._kernel_null_draws, kn._concentration)
    kn.kernel_layer(*_layer(rng), jax.random.key(0), top_k=TOP_K, num_draws=DRAWS)
    before = [f._cache_size() for f in kernels]
    for i in range(3):  # same shapes, new values and keys: no retrace
        kn.kernel_layer(*_layer(rng), jax.random.key(i + 1), top_k=TOP_K, num_draws=DRAWS)
    assert [f._cache_size() for f in kernels] == before
    kn.kernel_layer(*_layer(rng, H=2, KV=1, D=4, E=12, F=8), jax.random.key(0), top_k=TOP_K, num_draws=DRAWS)
    assert [f._cache_size() for f in kernels] == [b + 1 for b in before]  # a new shape does compile


# ----------------------------------------------------------------------------- FFN alignment null


@pytest.mark.parametrize("F, E, k", [(30, 10, 3), (4, 12, 5)])
def test_ffn_alignment_null_matches_monte_carlo_over_random_subspaces(F, E, k):
    rng = np.random.default_rng(9)
    u, _ = np.linalg.qr(rng.standard_normal((F, F)))
    v, _ = np.linalg.qr(rng.standard_normal((E, E)))
    r = min(F, E)
    w = u[:, :r] @ np.diag(0.85 ** np.arange(r)) @ v[:, :r].T  # non-flat spectrum; rank-deficient if F < E
    n = 40000
    basis, _ = np.linalg.qr(rng.standard_normal((n, E, k)))  # uniform random k-subspaces
    energy = np.sum((w @ basis) ** 2, axis=(-2, -1)) / np.sum(w * w)
    null = kn.ffn_alignment_null(w.astype(np.float32), k)
    assert null.draws is None
    np.testing.assert_allclose(null.mean, k / E)
    assert abs(energy.mean() - k / E) < 4 * energy.std() / math.sqrt(n)
    np.testing.assert_allclose(null.std, energy.std(), rtol=0.03)
    # The test can tell: ignoring the projector's negative covariance is off by far more than 3%.
    lam = np.linalg.svd(w, compute_uv=False) ** 2
    lam = lam / lam.sum()
    naive = math.sqrt(2 * k * (E - k) / (E * E * (E + 2)) * np.sum(lam ** 2))
    assert abs(naive / energy.std() - 1) > 0.1


def test_ffn_alignment_null_edge_cases():
    np.testing.assert_allclose(kn.ffn_alignment_null(np.eye(6, dtype=np.float32), 2).std, 0.0, atol=1e-4)
    assert np.isnan(kn.ffn_alignment_null(np.zeros((4, 6), np.float32), 2).std)
    with pytest.raises(ValueError):
        kn.ffn_alignment_null(np.ones((4, 6), np.float32), 7)


# ----------------------------------------------------------------------------- layer similarity


def test_layer_similarity_matches_numpy_and_is_bounded():
    rng = np.random.default_rng(11)
    L, H, E, k = 5, 3, 24, 4
    bases = np.linalg.qr(rng.standard_normal((L, H, E, k)))[0]
    bases[1] = np.linalg.qr(bases[0] + 0.05 * rng.standard_normal((H, E, k)))[0]  # layers 0, 1 related
    bases = bases.astype(np.float32)
    sim = kn.layer_similarity(bases)
    assert sim.shape == (H, L, L)
    b64 = bases.astype(np.float64)
    for h in range(H):
        for i in range(L):
            for j in range(L):
                c = b64[i, h].T @ b64[j, h]
                np.testing.assert_allclose(sim[h, i, j], np.sum(c * c) / k, atol=1e-5)
    np.testing.assert_allclose(np.diagonal(sim, axis1=1, axis2=2), 1.0, atol=1e-5)
    assert (sim >= 0).all() and (sim <= 1 + 1e-5).all()
    np.testing.assert_allclose(sim, np.swapaxes(sim, 1, 2), atol=1e-6)
    assert (sim[:, 0, 1] > 0.5).all() and (sim[:, 2, 3] < 0.5).all()
    bases[2, 1] = np.nan  # one undefined (layer, head) spoils only its own row and column
    sim = kn.layer_similarity(bases)
    assert np.isnan(sim[1, 2]).all() and np.isnan(sim[1, :, 2]).all()
    assert np.isfinite(sim[[0, 2]]).all() and np.isfinite(np.delete(np.delete(sim[1], 2, 0), 2, 1)).all()


# ----------------------------------------------------------------------------- summary


def _hand_table():
    nan = np.nan
    layer = np.array([3, 3, 7, 7, 9, 9])
    erank = np.array([5.0, 7.0, 2.0, 4.0, 6.0, nan])
    return {
        "layer": layer,
        "kernel_erank": erank,
        "kernel_erank_null_mean": np.full(6, 7.5),
        "kernel_erank_null_std": np.full(6, 0.2),
        "kernel_erank_z": (erank - 7.5) / 0.2,
        "ffn_alignment": np.array([0.07, 0.09, 0.03, 0.04, nan, nan]),
        "ffn_alignment_null_mean": np.full(6, 4 / 64),
        "ffn_alignment_null_std": np.full(6, 0.01),
        "ffn_alignment_z": np.array([1.0, 2.0, -2.0, -3.0, nan, nan]),
    }


def test_kernel_summary_against_hand_computation():
    rows = _hand_table()
    sim = np.ones((2, 3, 3))
    sim[:, 0, 1] = sim[:, 1, 0] = [0.2, 0.4]
    sim[:, 1, 2] = sim[:, 2, 1] = [0.5, 0.7]
    sim[:, 0, 2] = sim[:, 2, 0] = 0.9  # not adjacent: must not win
    out = kn.kernel_summary(rows, sim, top_k=4, hidden=64)
    json.dumps(out, allow_nan=False)
    layers = {p["layer"]: p for p in out["layers"]}
    assert sorted(layers) == [3, 7, 9]
    assert layers[3]["kernel_erank_mean"] == pytest.approx(6.0)
    assert layers[3]["kernel_erank_cv"] == pytest.approx(1 / 6)
    assert layers[9]["kernel_erank_mean"] == pytest.approx(6.0) and layers[9]["heads"] == 1
    assert layers[9]["ffn_alignment_mean"] is None
    b = out["bottleneck"]
    assert b["layer"] == 7
    assert b["kernel_erank"] == pytest.approx(3.0) and b["kernel_erank_null_mean"] == pytest.approx(7.5)
    # the z of the layer mean (3.0 over 2 heads) against the null of that mean (std 0.2 / sqrt(2)), not
    # the mean per-head z (-22.5); effect sizes beside it
    assert b["kernel_erank_null_std"] == pytest.approx(0.2 / math.sqrt(2))
    assert b["kernel_erank_z"] == pytest.approx(-4.5 / (0.2 / math.sqrt(2))) and b["below_null_3std"] is True
    assert b["kernel_erank_diff"] == pytest.approx(-4.5) and b["kernel_erank_ratio"] == pytest.approx(3.0 / 7.5)
    assert layers[7]["kernel_erank_head_null_std"] == pytest.approx(0.2)
    assert layers[9]["kernel_erank_null_std"] == pytest.approx(0.2)  # one finite head
    assert b["ffn_alignment"] == pytest.approx(0.035)
    assert b["ffn_alignment_ratio"] == pytest.approx(0.035 * 16)
    assert b["ffn_alignment_z"] == pytest.approx((0.035 - 4 / 64) / (0.01 / math.sqrt(2)))
    adj = out["adjacent_similarity"]
    null = sp.grassmann_null(4, 64)
    assert adj["chance"] == pytest.approx(1 / 16) and adj["null_std"] == pytest.approx(float(null.std))
    assert [p["layers"] for p in adj["pairs"]] == [[3, 7], [7, 9]]
    assert [p["similarity"] for p in adj["pairs"]] == pytest.approx([0.3, 0.6])
    assert adj["pairs"][1]["z"] == pytest.approx((0.6 - 1 / 16) / float(null.std))
    assert adj["largest"]["layers"] == [7, 9]


def test_kernel_summary_flags_and_refusals():
    rows = _hand_table()
    rows["kernel_erank_null_std"] = np.full(6, 3.0)  # 3.0 is not below 7.5 - 3 * 3 / sqrt(2)
    out = kn.kernel_summary(rows, None, top_k=4, hidden=64)
    assert out["bottleneck"]["below_null_3std"] is False and out["adjacent_similarity"] is None
    with pytest.raises(ValueError, match="effective top_k"):
        kn.kernel_summary(rows, None, top_k=16, hidden=64)  # the table was made with k = 4
    with pytest.raises(ValueError):
        kn.kernel_summary(rows, np.ones((2, 4, 4)), top_k=4, hidden=64)  # 4 layers vs 3


def _render(rows):
    found = kn.kernel_summary(rows, None, top_k=4, hidden=64)
    return kn.render(kn.KernelSummary(top_k=4, hidden=64, chance=found["chance"], layers=tuple(found["layers"]),
                                      bottleneck=found["bottleneck"], adjacent_similarity=None, heads=rows)).text


def _layer_rows_of(text: str) -> dict[str, list[str]]:
    """The kernel section's per-layer table as `{layer: cells}`."""
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and "layer" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_report_prints_a_z_only_where_the_null_is_resolved():
    rows = _hand_table()  # ffn_alignment's exact null: resolved wherever its std is positive
    rows["kernel_erank_null_std_se"] = np.array([0.01, 0.01, 0.1, 0.1, 0.01, 0.01])  # layer 7: se / std = 0.5
    found = {p["layer"]: p for p in kn.kernel_summary(rows, None, top_k=4, hidden=64)["layers"]}
    assert [found[l]["kernel_erank_resolved"] for l in (3, 7, 9)] == [True, False, True]
    assert all(found[l]["ffn_alignment_resolved"] for l in (3, 7))
    text = _render(rows)
    table = _layer_rows_of(text)
    z, ffn_z = 2, 5  # columns after "layer": kernel erank, null, z, CV, FFN alignment / chance, FFN z
    # z of the layer mean: (6 - 7.5) / (0.2 / sqrt(2)) and (0.035 - 1/16) / (0.01 / sqrt(2))
    assert table["3"][z] == "-10.6" and table["7"][z] == "n/a" and table["7"][ffn_z] == "-3.89"
    assert "bottleneck (lowest mean kernel effective rank) is layer 7" in text and "not resolved" in text
    rows["ffn_alignment_null_std"] = np.zeros(6)  # a degenerate exact null: no z either
    assert _layer_rows_of(_render(rows))["3"][ffn_z] == "n/a"
    assert "z of the layer mean n/a" in _render(rows)


def test_ffn_alignment_layer_null_counts_heads_that_share_a_key_head():
    """The null std of a layer's mean alignment against the spread of that mean over 400 layers of
    Gaussian heads (numpy, kernels formed explicitly), within 4 standard errors of a std from 400
    samples; with k = D every head of a group has the group's key row space, so the layer mean
    varies sqrt(H / KV) times more than independent heads would let it."""
    H, KV, D, E, F, n = 8, 2, 8, 24, 40, 400
    rng = np.random.default_rng(5)
    u, _ = np.linalg.qr(rng.standard_normal((F, F)))
    v, _ = np.linalg.qr(rng.standard_normal((E, E)))
    w = u[:, :E] @ np.diag(0.9 ** np.arange(E)) @ v.T  # a non-flat spectrum
    q = rng.standard_normal((n, H, D, E))
    k = rng.standard_normal((n, KV, D, E))[:, np.arange(H) // (H // KV)]
    kernel_vectors = np.linalg.svd(np.swapaxes(q, -1, -2) @ k)[2]  # (n, H, E, E): rows are key-side vectors
    for top in (3, D):
        basis = np.swapaxes(kernel_vectors[:, :, :top], -1, -2)
        means = (np.sum((w @ basis) ** 2, axis=(-2, -1)) / np.sum(w * w)).mean(axis=1)
        per_head = float(kn.ffn_alignment_null(w.astype(np.float32), top).std)
        std, se = kn.ffn_alignment_layer_null_std(jax.random.key(0), per_head, E, top, H, KV, D, num_draws=64)
        assert abs(std / means.std(ddof=1) - 1) < 4 / math.sqrt(2 * (n - 1)) + 2 * se / std, (top, std, means.std())
        assert abs(per_head / math.sqrt(H) / means.std(ddof=1) - 1) > 0.3  # independent heads: far off
    assert se == 0.0 and std == pytest.approx(per_head / math.sqrt(KV))  # k = D: rho = 1 exactly
    assert kn.ffn_alignment_layer_null_std(jax.random.key(0), per_head, E, 3, H, H, D)[0] == pytest.approx(per_head / math.sqrt(H))


def test_end_to_end_layers_feed_the_summary():
    rng = np.random.default_rng(12)
    tables, bases = [], []
    for layer in range(3):
        attn, mlp = _layer(rng)
        if layer == 1:  # a rank-2 bottleneck
            attn["q"] = _low_rank_q(rng, 2)
        cols, b = kn.kernel_layer(attn, mlp, jax.random.key(layer), top_k=TOP_K, num_draws=DRAWS)
        tables.append({"layer": np.full(4, layer), **cols})
        bases.append(b)
    rows = {name: np.concatenate([t[name] for t in tables]) for name in tables[0]}
    out = kn.kernel_summary(rows, kn.layer_similarity(np.stack(bases)), top_k=4, hidden=32)
    json.dumps(out, allow_nan=False)
    assert out["bottleneck"]["layer"] == 1 and out["bottleneck"]["below_null_3std"] is True
    assert len(out["adjacent_similarity"]["pairs"]) == 2


_KERNEL_ON_DEVICES = r"""
import sys
import jax
import numpy as np
from spectrax.analyses import kernel as kn
assert jax.local_device_count() == 4, jax.devices()
data = dict(np.load(sys.argv[1]))
svd, devices = kn.sp.qk_kernel_svd, []
def spy(q, k, top_k):  # the kernel SVD sees its inputs spread over every device
    devices.append(len(q.sharding.device_set))
    return svd(q, k, top_k=top_k)
kn.sp.qk_kernel_svd = spy
cols, bases = kn.kernel_layer({"q": data["q"], "k": data["k"]}, {"gate": data["gate"]}, jax.random.key(5),
                              top_k=4, num_draws=4)
assert devices == [4], devices
np.savez(sys.argv[2], bases=bases, **cols)
"""


@pytest.mark.slow
def test_kv_groups_split_over_four_cpu_devices_give_the_one_device_table(tmp_path):
    """6 query / 3 KV heads (3 groups, padded to 4) on 4 emulated CPU devices: the same table and
    bases as on one device (the Python API and the command line split them over the local devices)."""
    rng = np.random.default_rng(8)
    data = {"q": rng.standard_normal((6, 8, 48)), "k": rng.standard_normal((3, 8, 48)),
            "gate": rng.standard_normal((40, 48))}
    data = {n: x.astype(np.float32) for n, x in data.items()}
    np.savez(tmp_path / "layer.npz", **data)
    run_on_cpu_devices(_KERNEL_ON_DEVICES, str(tmp_path / "layer.npz"), str(tmp_path / "out.npz"))
    four = np.load(tmp_path / "out.npz")
    cols, bases = kn.kernel_layer({"q": data["q"], "k": data["k"]}, {"gate": data["gate"]}, jax.random.key(5),
                                  top_k=4, num_draws=4)
    assert set(four.files) == set(cols) | {"bases"}
    np.testing.assert_allclose(four["bases"], bases, rtol=2e-5, atol=1e-5)
    for name, value in cols.items():
        np.testing.assert_allclose(four[name], value, rtol=2e-5, atol=1e-6, err_msg=name)


def test_the_kernel_null_is_pooled_over_the_heads_of_a_layer_and_scaled_per_head():
    """Every head of a layer shares one shape, so its null rests on the draws of all heads:
    scale-free statistics get one pooled null for all, kernel_sigma_max the pooled unit null times
    each head's rms(W_Q,h) * rms(W_K,g)."""
    from spectrax.analyses.kernel import _pooled_over_heads

    rng = np.random.default_rng(3)
    H, KV, D, E, N = 4, 2, 8, 32, 5
    q = rng.standard_normal((H, D, E)).astype(np.float32) * np.array([1, 2, 3, 4], np.float32)[:, None, None]
    k = rng.standard_normal((KV, D, E)).astype(np.float32)
    scale = np.sqrt((q.astype(np.float64) ** 2).mean((1, 2))) * np.sqrt((k.astype(np.float64) ** 2).mean((1, 2)))[[0, 0, 1, 1]]
    erank = rng.random((N, H))
    unit_sigma = rng.random((N, H)) + 1
    nulls = {"kernel_erank": sp.NullSummary(None, None, erank),
             "kernel_sigma_max": sp.NullSummary(None, None, unit_sigma * scale)}
    pooled = _pooled_over_heads(nulls, q, k)
    np.testing.assert_allclose(pooled["kernel_erank"].mean, np.full(H, erank.mean()), rtol=1e-12)
    np.testing.assert_allclose(pooled["kernel_erank"].std, np.full(H, erank.std(ddof=1)), rtol=1e-12)
    np.testing.assert_allclose(pooled["kernel_sigma_max"].mean, unit_sigma.mean() * scale, rtol=1e-5)
    np.testing.assert_allclose(pooled["kernel_sigma_max"].std, unit_sigma.std(ddof=1) * scale, rtol=1e-5)
