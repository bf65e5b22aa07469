"""Null models: exact formulas vs Monte Carlo, Gaussian/shuffle nulls, z-scores and percentiles."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectrax.spectral import metrics, nulls
from spectrax.spectral.decompose import singular_values
from spectrax.spectral.gqa import gqa_pair
from spectrax.spectral.pairs import gqa_pair_statistics


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("d", [2, 3, 16, 128, 5120])
def test_expected_abs_cos_formula_vs_monte_carlo(d):
    m = float(nulls.expected_abs_cos(d))
    if d == 2:
        assert m == pytest.approx(2 / math.pi, rel=1e-12)
    if d == 3:
        assert m == pytest.approx(0.5, rel=1e-12)
    assert m == pytest.approx(math.sqrt(2 / (math.pi * d)), rel=1.0 / d)   # ~ 0.8 / sqrt(d)
    assert m < 1 / math.sqrt(d)                                            # below the RMS
    if d <= 128:
        rng = np.random.default_rng(50 + d)
        n = 40000
        c = np.abs(np.sum(_unit(rng, n, d) * _unit(rng, n, d), -1))
        se = c.std() / math.sqrt(n)
        assert abs(c.mean() - m) < 4 * se
        assert float(nulls.abs_cos_std(d)) == pytest.approx(c.std(), rel=0.03)


def test_grassmann_and_cos_nulls_vs_monte_carlo():
    rng = np.random.default_rng(51)
    d, k, n = 48, 6, 4000
    a = np.linalg.qr(rng.standard_normal((n, d, k)))[0]
    b = np.linalg.qr(rng.standard_normal((n, d, k)))[0]
    g = np.asarray(metrics.grassmann(a.astype(np.float32), b.astype(np.float32)))
    null = nulls.grassmann_null(k, d)
    assert float(null.mean) == pytest.approx(k / d)
    assert abs(g.mean() - k / d) < 4 * g.std() / math.sqrt(n)
    assert float(null.std) == pytest.approx(g.std(), rel=0.06)
    c = np.asarray(metrics.mean_abs_cos(a.astype(np.float32), b.astype(np.float32)))
    cn = nulls.cos_null(d, k)
    assert abs(c.mean() - float(cn.mean)) < 4 * c.std() / math.sqrt(n)
    assert float(cn.std) == pytest.approx(c.std(), rel=0.08)          # independence approximation


def _stats(q, k):
    return gqa_pair_statistics(q, k)


L, H, KV, D, E = 2, 4, 2, 8, 48
NUM_DRAWS = 24


@pytest.fixture(scope="module")
def gaussian_heads():
    """Gaussian Q/K stacks (layers, heads, head_dim, hidden) with their Gaussian null."""
    rng = np.random.default_rng(52)
    q = (0.02 * rng.standard_normal((L, H, D, E))).astype(np.float32)
    k = (0.05 * rng.standard_normal((L, KV, D, E))).astype(np.float32)
    null = nulls.gaussian_null(jax.random.key(0), _stats, q, k, num_draws=NUM_DRAWS)
    return q, k, null


def test_gaussian_null_z_scores_of_gaussian_inputs_are_order_one(gaussian_heads):
    q, k, null = gaussian_heads
    obs = gqa_pair_statistics(q, k)
    assert null.draws["pearson"].shape == (NUM_DRAWS, L, H)
    z = nulls.zscore(obs, null)
    allz = np.concatenate([np.asarray(v).ravel() for v in z.values()])
    assert np.all(np.isfinite(allz))
    assert np.max(np.abs(allz)) < 5.0
    assert 0.3 < np.mean(allz**2) < 3.0
    pct = nulls.percentile(obs, null)
    allp = np.concatenate([np.asarray(v).ravel() for v in pct.values()])
    assert np.all((allp >= 0) & (allp <= 100)) and 25 < allp.mean() < 75
    # the Monte Carlo mean of cos_v agrees with the exact formula
    se = np.asarray(null.std["cos_v"]) / math.sqrt(NUM_DRAWS)
    assert np.all(np.abs(np.asarray(null.mean["cos_v"]) - float(nulls.expected_abs_cos(E))) < 5 * se)
    # a structured input is far from the null: K = Q for the first head of each group
    obs_same = gqa_pair_statistics(q, q[:, ::2])
    z_same = nulls.zscore(obs_same, null)
    np.testing.assert_allclose(np.asarray(obs_same["cos_u"])[:, ::2], 1.0, rtol=1e-5)
    assert np.all(np.asarray(z_same["cos_u"])[:, ::2] > 5)


def test_gaussian_null_is_keyed(gaussian_heads):
    q, k, null = gaussian_heads
    same = nulls.gaussian_null(jax.random.key(0), _stats, q, k, num_draws=NUM_DRAWS)
    np.testing.assert_array_equal(same.draws["ssr"], null.draws["ssr"])
    other = nulls.gaussian_null(jax.random.key(2), _stats, q, k, num_draws=NUM_DRAWS)
    assert not np.allclose(other.draws["pearson"], null.draws["pearson"])


def _sigma_max(w):
    return metrics.sigma_max(singular_values(w))


def test_gaussian_null_scale_batch_size_and_unit_variance():
    rng = np.random.default_rng(54)
    w = np.stack([0.01 * rng.standard_normal((16, 64)), 3.0 * rng.standard_normal((16, 64))]).astype(np.float32)
    null = nulls.gaussian_null(jax.random.key(3), _sigma_max, w, num_draws=16)
    np.testing.assert_allclose(null.mean, _sigma_max(w), rtol=0.1)
    # the draws depend on the key only, not on how many are evaluated at once
    batched = nulls.gaussian_null(jax.random.key(3), _sigma_max, w, num_draws=16, batch_size=4)
    np.testing.assert_allclose(batched.draws, null.draws, rtol=1e-5)
    unit = nulls.gaussian_null(
        jax.random.PRNGKey(3),                                            # a legacy uint32 key
        _sigma_max, jax.ShapeDtypeStruct(w.shape, jnp.bfloat16), num_draws=16
    )
    np.testing.assert_allclose(unit.mean, 8.0 + 4.0, rtol=0.1)          # sqrt(64) + sqrt(16)
    assert unit.mean.dtype == jnp.float32


def _erank(w):
    return metrics.effective_rank(singular_values(w))


def test_shuffle_null_keeps_entries_and_detects_low_rank():
    rng = np.random.default_rng(55)
    x = rng.standard_normal((3, 12, 40)).astype(np.float32)
    shuffled = np.asarray(nulls.shuffle_entries(jax.random.key(4), x))
    np.testing.assert_array_equal(np.sort(shuffled.reshape(3, -1), -1), np.sort(x.reshape(3, -1), -1))
    assert not np.array_equal(shuffled, x)
    low = (rng.standard_normal((3, 12, 2)) @ rng.standard_normal((3, 2, 40))).astype(np.float32)
    both = np.concatenate([x, low])
    null = nulls.shuffle_null(jax.random.key(5), _erank, both, num_draws=12)
    z = np.asarray(nulls.zscore(_erank(both), null))
    assert np.all(np.abs(z[:3]) < 5)                    # unstructured: O(1)
    assert np.all(z[3:] < -10)                          # rank 2 vs its shuffles: far below


def test_zscore_percentile_and_columns_arithmetic():
    draws = jnp.array([[1.0], [2.0], [3.0], [4.0]])
    null = nulls.NullSummary(jnp.array([2.5]), jnp.array([0.5]), draws)
    np.testing.assert_allclose(nulls.zscore(jnp.array([3.5]), null._replace(draws=None)), [2.0])  # an exact null
    # a Monte Carlo null: its mean is known only to std(draws) / sqrt(4), which the z counts
    mean_se = np.std([1.0, 2.0, 3.0, 4.0], ddof=1) / 2
    np.testing.assert_allclose(nulls.zscore(jnp.array([3.5]), null), [1.0 / np.sqrt(0.25 + mean_se**2)], rtol=1e-6)
    np.testing.assert_allclose(nulls.null_z(3.5, 2.5, 0.5, 0.5 / np.sqrt(8)), 2.0 / np.sqrt(1 + 1 / 8))
    assert np.isnan(nulls.null_z(3.5, 2.5, 0.0))
    np.testing.assert_allclose(nulls.percentile(jnp.array([3.0]), null), [62.5])   # 2 below + half a tie
    zero = nulls.NullSummary(jnp.array([1.0]), jnp.array([0.0]))
    assert np.isnan(nulls.zscore(jnp.array([2.0]), zero)).all()
    with pytest.raises(ValueError):
        nulls.percentile(jnp.array([1.0]), zero)
    cols = nulls.null_columns(
        {"cos_u": jnp.full((2, 3), 0.3), "sigma_max": jnp.ones((2, 3))},
        {"cos_u": nulls.cos_null(16, 16)},
    )
    assert set(cols) == {"cos_u", "cos_u_null_mean", "cos_u_null_std", "cos_u_z", "cos_u_diff", "cos_u_ratio", "sigma_max"}
    assert cols["cos_u_null_mean"].shape == (2, 3)
    mean = nulls.expected_abs_cos(16)
    np.testing.assert_allclose(cols["cos_u_diff"], 0.3 - mean, rtol=1e-6)
    np.testing.assert_allclose(cols["cos_u_ratio"], 0.3 / mean, rtol=1e-6)
    mc = nulls.null_columns({"x": jnp.array([3.5])}, {"x": null})
    assert {"x_pct", "x_null_mean_se", "x_null_std_se"} <= set(mc)
    np.testing.assert_allclose(mc["x_null_mean_se"], [np.std([1, 2, 3, 4], ddof=1) / 2], rtol=1e-6)
    split = nulls.split_null(nulls.NullSummary({"a": 1.0, "b": 2.0}, {"a": 0.1, "b": 0.2}, None))
    assert split["b"].mean == 2.0 and split["a"].draws is None


def test_gaussian_null_compiles_once_across_layers_even_with_fresh_partials():
    rng = np.random.default_rng(56)
    chex.clear_trace_counter()

    def stat(w, rtol):
        return metrics.condition_number(singular_values(w), rtol=rtol)

    counted = chex.assert_max_traces(stat, n=1)
    for i in range(3):
        layer = rng.standard_normal((4, 6, 16)).astype(np.float32)
        fn = functools.partial(counted, rtol=1e-6)                 # rebuilt for every layer
        nulls.gaussian_null(jax.random.key(i), fn, layer, num_draws=3)
    with pytest.raises(ValueError):
        nulls.gaussian_null(jax.random.key(0), fn, layer, num_draws=1)


def _pearson_and_scale(sq, sk):
    return {
        "pearson": gqa_pair(metrics.pearson, sq, sk, axis=1),
        "sigma_max_q": metrics.sigma_max(sq),
    }


def test_spectrum_null_agrees_with_full_gaussian_null(gaussian_heads):
    q, k, null = gaussian_heads
    fast = nulls.gaussian_spectrum_null(jax.random.key(7), _pearson_and_scale, q, k, num_draws=NUM_DRAWS)
    assert fast.mean["pearson"].shape == (L, H)
    full_mean = np.asarray(null.mean["pearson"])
    fast_std, full_std = np.asarray(fast.std["pearson"]), np.asarray(null.std["pearson"])
    se = np.sqrt((fast_std**2 + full_std**2) / NUM_DRAWS)
    assert np.all(np.abs(np.asarray(fast.mean["pearson"]) - full_mean) < 5 * se)
    np.testing.assert_allclose(fast_std.mean(), full_std.mean(), rtol=0.35)
    # scale matched to each real head's RMS: sigma_max ~ rms * (sqrt(E) + sqrt(D))
    rms = np.sqrt(np.mean(q.astype(np.float64) ** 2, axis=(-2, -1)))
    np.testing.assert_allclose(np.asarray(fast.mean["sigma_max_q"]) / rms, np.sqrt(E) + np.sqrt(D), rtol=0.1)


def test_spectrum_draws_shared_by_statistics_equal_the_one_call_null():
    """`null_from_draws(f, *gaussian_spectrum_draws(...))` is `gaussian_spectrum_null(f, ...)` (to
    float32 rounding: a different `batch_size` vectorizes the chi sampler's arithmetic differently,
    which moves a few draws by an ulp), draws are scale-matched per matrix, and one set of draws
    serves several statistics."""
    rng = np.random.default_rng(58)
    q = rng.standard_normal((2, 4, 8, 40)).astype(np.float32) * np.array([1.0, 3.0])[:, None, None, None]
    k = rng.standard_normal((2, 2, 8, 40)).astype(np.float32)
    key = jax.random.key(9)
    draws = nulls.gaussian_spectrum_draws(key, q, k, num_draws=6, batch_size=2)
    assert [d.shape for d in draws] == [(6, 2, 4, 8), (6, 2, 2, 8)]
    assert all(np.all(np.diff(np.asarray(d), axis=-1) <= 0) for d in draws)
    one_call = nulls.gaussian_spectrum_null(key, _pearson_and_scale, q, k, num_draws=6)
    shared = nulls.null_from_draws(_pearson_and_scale, *draws)
    chex.assert_trees_all_close(shared, one_call, rtol=1e-5)
    chex.assert_trees_all_equal(shared, nulls.gaussian_spectrum_null(key, _pearson_and_scale, q, k, num_draws=6,
                                                                     batch_size=2))
    # a statistic of q alone from the same draws: sigma_max's null follows each layer's RMS
    alone = nulls.null_from_draws(lambda s: metrics.sigma_max(s), draws[0], batch_size=4)
    np.testing.assert_array_equal(alone.draws, np.asarray(shared.draws["sigma_max_q"]))
    rms = np.sqrt(np.mean(q.astype(np.float64) ** 2, axis=(-2, -1)))
    ratio = np.asarray(alone.mean) / rms
    dense = np.linalg.svd(rng.standard_normal((4000, 8, 40)), compute_uv=False)[:, 0].mean()  # ~8.53
    np.testing.assert_allclose(ratio, np.full_like(ratio, dense), rtol=0.1)  # 6 draws: SE 2.4%
    with pytest.raises(ValueError):
        nulls.null_from_draws(metrics.sigma_max, draws[0][:1])


def test_pool_null_shares_one_null_over_an_axis_and_scales_it():
    draws = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)  # (draws, layers, heads)
    pooled = nulls.pool_null(nulls.NullSummary(None, None, draws), axis=1)
    assert pooled.draws.shape == (8, 3, 1) and pooled.mean.shape == (3, 4)
    np.testing.assert_allclose(pooled.mean[:, 0], draws.mean(axis=(0, 2)))
    np.testing.assert_allclose(pooled.std[:, 2], [np.std(draws[:, i].ravel(), ddof=1) for i in range(3)])
    scale = np.array([1.0, 2.0, 3.0, 4.0])
    scaled = nulls.pool_null(nulls.NullSummary(None, None, draws), axis=1, scale=scale)
    np.testing.assert_allclose(scaled.mean, pooled.mean * scale)
    np.testing.assert_allclose(scaled.draws[:, 1, 3], pooled.draws[:, 1, 0] * 4)
    with pytest.raises(ValueError, match="axis 2"):
        nulls.pool_null(nulls.NullSummary(None, None, draws), axis=2)


def test_mean_null_std_counts_the_correlation_of_heads_that_share_a_key_head():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(3), 4)  # 12 query heads reading 3 key heads
    shared, own = 0.8, 0.5
    draws = rng.normal(size=(4000, 3))[:, groups] * shared + rng.normal(size=(4000, 12)) * own
    exact = np.sqrt((12 * (shared**2 + own**2) + 3 * 4 * 3 * shared**2) / 12**2)
    np.testing.assert_allclose(nulls.mean_null_std(draws, groups), exact, rtol=0.05)
    np.testing.assert_allclose(nulls.mean_null_std(draws, groups), draws.mean(axis=1).std(ddof=1), rtol=0.05)
    independent = nulls.mean_null_std(draws, np.arange(12))  # heads taken as independent: too tight
    np.testing.assert_allclose(independent, np.sqrt((shared**2 + own**2) / 12), rtol=0.05)
    layered = nulls.mean_null_std(np.stack([draws, 2 * draws], axis=1), groups)  # (draws, layers, heads)
    np.testing.assert_allclose(layered, [exact, 2 * exact], rtol=0.05)
    with pytest.raises(ValueError, match="12 heads"):
        nulls.mean_null_std(draws, groups[:5])


def test_monte_carlo_error_matches_the_spread_of_repeated_nulls():
    """The standard errors of a null's mean and std are the spread those estimates have over repeated
    Monte Carlo runs, for a Gaussian and for a heavy-tailed (Laplace) null."""
    rng = np.random.default_rng(7)
    for sample, rtol in ((rng.standard_normal, 0.12), (rng.laplace, 0.25)):  # a 4th moment from 24 draws runs low
        runs = sample(size=(24, 4000))                          # 4000 repeated nulls of 24 draws each
        mean_se, std_se = nulls.monte_carlo_error(runs)
        rms = lambda x: np.sqrt(np.mean(np.square(x)))
        np.testing.assert_allclose(rms(mean_se), np.std(runs.mean(axis=0)), rtol=0.05)
        np.testing.assert_allclose(rms(std_se), np.std(runs.std(axis=0, ddof=1)), rtol=rtol)
    gaussian_rule = np.std(runs, axis=0, ddof=1) / np.sqrt(2 * 23)
    assert np.mean(std_se) > 1.1 * np.mean(gaussian_rule)      # the Laplace tail is seen
    mean_se, std_se = nulls.monte_carlo_error(np.array([[1.0, np.nan], [1.0, np.nan], [1.0, 2.0]]))
    assert mean_se[0] == 0 and std_se[0] == 0 and np.isnan(std_se[1])    # constant; fewer than two draws


def test_resolved_needs_a_positive_std_known_to_the_bound():
    std = np.array([1.0, 1.0, 0.0, np.nan, 1.0])
    se = np.array([0.1, nulls.RESOLVED_BOUND * 1.01, 0.0, 0.0, np.nan])
    np.testing.assert_array_equal(nulls.resolved(std, se), [True, False, False, False, False])
    np.testing.assert_array_equal(nulls.resolved(np.array([0.3, 0.0])), [True, False])   # exact nulls


def test_zero_draws_give_nan_nulls_without_compiling_and_one_draw_is_refused():
    q = np.ones((2, 3, 8, 20), np.float32)
    compiled = nulls._null_of_draws._cache_size(), nulls._spectrum_draws._cache_size()
    null = nulls.gaussian_spectrum_null(jax.random.key(0), _pearson_and_scale, q, q, num_draws=0)
    assert (nulls._null_of_draws._cache_size(), nulls._spectrum_draws._cache_size()) == compiled
    assert null.draws["pearson"].shape == (0, 2, 3) and np.isnan(null.mean["pearson"]).all()
    assert null.std["sigma_max_q"].shape == (2, 3) and np.isnan(null.std["sigma_max_q"]).all()
    assert np.isnan(nulls.gaussian_null(jax.random.key(0), metrics.sigma_max, q, num_draws=0).mean).all()
    assert np.isnan(nulls.shuffle_null(jax.random.key(0), metrics.sigma_max, q, num_draws=0).std).all()
    cols = nulls.null_columns({"pearson": np.zeros((2, 3))}, nulls.split_null(null))
    assert all(np.isnan(cols[f"pearson_{c}"]).all() for c in ("null_mean", "null_std", "z", "pct", "null_std_se"))
    pooled = nulls.pool_null(nulls.split_null(null)["pearson"], axis=1)
    assert pooled.mean.shape == (2, 3) and np.isnan(pooled.std).all()
    for bad in (1, -1):
        with pytest.raises(ValueError, match="0 .no Monte Carlo null. or >= 2"):
            nulls.gaussian_spectrum_draws(jax.random.key(0), q, num_draws=bad)
