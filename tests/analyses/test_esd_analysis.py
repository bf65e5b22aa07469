"""ESD metrics equal float64 numpy recomputations; the Gaussian null and shuffle baseline behave."""

import math

import jax
import ml_dtypes
import numpy as np
import pytest

from spectrax import spectral as sp
from spectrax.analyses import esd
from spectrax.analyses.esd import ESD_STATISTICS, esd_statistics, matrix_esd_rows
from spectrax.spectral import nulls

SHAPE = (64, 256)


# ----------------------------------------------------------------------------- float64 references


def _mp_median(ratio: float) -> float:
    """Median of MP(ratio, 1) by integrating its density in float64 (theta substitution, no scipy)."""
    a, b = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2
    theta = np.linspace(0.0, np.pi, 200_001)
    x = a + (b - a) * (1 - np.cos(theta)) / 2
    # density * dx/dtheta = ((b - a)/2 sin theta)^2 / (2 pi ratio x): smooth, no edge singularity
    f = ((b - a) / 2 * np.sin(theta)) ** 2 / (2 * np.pi * ratio * x)
    cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(theta))])
    assert abs(cdf[-1] - 1) < 1e-8
    return float(np.interp(0.5, cdf, x))


def _np_powerlaw(x: np.ndarray, min_tail: int = esd.MIN_TAIL, weightwatcher: bool = False) -> dict:
    """alpha MLE and tail KS for every x_min candidate, float64: Clauset et al.'s two-sided KS, or
    WeightWatcher's `max |F - t/n|` over tails of >= 2 eigenvalues above 1e-5."""
    xs = np.sort(np.asarray(x, np.float64))
    out = {}
    for j in range(len(xs) - min_tail + 1):
        xmin, tail = xs[j], xs[j:]
        denom = np.log(tail / xmin).sum()
        if xmin <= (1e-5 if weightwatcher else 0) or denom <= 0:
            continue
        alpha = 1 + len(tail) / denom
        cdf = 1 - (tail / xmin) ** (1 - alpha)
        t = np.arange(len(tail))
        if weightwatcher:
            ks = np.abs(cdf - t / len(tail)).max()
        else:
            ks = max(((t + 1) / len(tail) - cdf).max(), (cdf - t / len(tail)).max())
        out[xmin] = (alpha, ks, len(tail))
    return out


def _np_esd(w: np.ndarray) -> dict:
    m, n = w.shape
    s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
    lam = s**2 / max(m, n)
    ratio = min(m, n) / max(m, n)
    sigma2 = np.median(lam) / _mp_median(ratio)
    edge = sigma2 * (1 + math.sqrt(ratio)) ** 2
    evals = s**2
    return {"lam": lam, "evals": evals, "mp_scale": sigma2, "bulk_edge": edge, "lambda_max": evals.max(),
            "stable_rank": evals.sum() / evals.max()}


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("shape", [SHAPE, (200, 48)])
def test_statistics_equal_float64_numpy(shape):
    rng = np.random.default_rng(shape[0])
    m, n = shape
    u = np.linalg.qr(rng.standard_normal((m, 2)))[0]
    v = np.linalg.qr(rng.standard_normal((n, 2)))[0]
    ws = [0.1 * rng.standard_normal(shape), 0.1 * rng.standard_normal(shape) + u @ np.diag([9.0, 6.0]) @ v.T]
    ws = np.stack(ws).astype(np.float32)
    got = {k: np.asarray(v) for k, v in esd_statistics(sp.singular_values(ws), shape).items()}
    assert set(got) == set(ESD_STATISTICS)
    assert got["num_spikes"][1] >= 2
    for i, w in enumerate(ws):
        ref = _np_esd(w)
        np.testing.assert_allclose(np.asarray(sp.eigenvalues(sp.singular_values(w), shape))[::-1], np.sort(ref["lam"]),
                                   rtol=2e-4, atol=1e-6 * ref["lam"].max())
        for stat in ("mp_scale", "bulk_edge", "lambda_max", "stable_rank"):
            np.testing.assert_allclose(got[stat][i], ref[stat], rtol=3e-4, err_msg=stat)
        assert got["spike_fraction"][i] == got["num_spikes"][i] / min(shape)
        np.testing.assert_allclose(got["mp_softrank"][i], got["bulk_max"][i] / got["lambda_max"][i], rtol=1e-5)
        # Tail fits: the chosen x_min is a KS minimizer (up to float32 ties) and alpha is the MLE there;
        # WeightWatcher's rule on s^2 for `alpha`, Clauset et al.'s for `alpha_clauset`.
        fits = _np_powerlaw(ref["evals"], min_tail=2, weightwatcher=True)
        best_ks = min(ks for _, ks, _ in fits.values())
        xmin = min(fits, key=lambda x: abs(x - got["xmin"][i]))
        alpha, ks, ntail = fits[xmin]
        np.testing.assert_allclose(got["xmin"][i], xmin, rtol=2e-4)
        np.testing.assert_allclose(got["alpha"][i], alpha, rtol=2e-3)
        np.testing.assert_allclose(got["alpha_ks"][i], ks, atol=2e-4)
        assert ks <= best_ks + 2e-4
        assert got["num_pl_spikes"][i] == ntail
        np.testing.assert_allclose(got["tail_fraction"][i], ntail / min(shape), rtol=1e-6)
        np.testing.assert_allclose(got["alpha_weighted"][i], alpha * np.log10(ref["lambda_max"]), rtol=2e-3)
        np.testing.assert_allclose(got["log_alpha_norm"][i], np.log10(np.sum(ref["evals"] ** alpha)), rtol=2e-3)
        clauset = _np_powerlaw(ref["lam"])
        best = min(clauset.values(), key=lambda f: f[1])
        close = [a for a, k, _ in clauset.values() if k <= best[1] + 2e-4]
        assert min(abs(got["alpha_clauset"][i] - a) / a for a in close) < 2e-3


@pytest.mark.parametrize("alpha", [2.0, 2.5, 4.0])
def test_alpha_recovered_from_a_pareto_spectrum(alpha):
    rng = np.random.default_rng(int(10 * alpha))
    shape = (1500, 3000)
    lam = 0.3 * (1 + rng.pareto(alpha - 1, size=(2, shape[0])))   # density ~ lam^-alpha above 0.3
    s = np.sort(np.sqrt(lam * max(shape)), axis=-1)[..., ::-1].astype(np.float32)
    got = esd_statistics(s, shape)
    se = (alpha - 1) / np.sqrt(np.asarray(got["tail_fraction"]) * shape[0])
    assert np.all(np.abs(np.asarray(got["alpha"]) - alpha) < 4 * se), (got["alpha"], se)
    assert np.all(np.asarray(got["alpha_ks"]) < 0.05)


@pytest.mark.slow
def test_gaussian_matrices_sit_inside_their_null_and_a_spike_does_not():
    rng = np.random.default_rng(3)
    m, n = SHAPE
    mats = {f"g{i}": 0.05 * rng.standard_normal(SHAPE).astype(np.float32) for i in range(5)}
    u = np.linalg.qr(rng.standard_normal((m, 2)))[0]
    v = np.linalg.qr(rng.standard_normal((n, 2)))[0]
    mats["spike"] = (0.05 * rng.standard_normal(SHAPE) + u @ np.diag([3.0, 2.0]) @ v.T).astype(np.float32)
    # Six matrices and the draw counts of the next test: one compiled kernel serves both.
    rows = matrix_esd_rows(mats, jax.random.key(0), num_draws=16, shuffle_draws=6)
    for stat in ESD_STATISTICS:
        z = np.array([rows[f"g{i}"][f"{stat}_z"] for i in range(5)])
        # z is NaN where every null draw agrees (no spikes beyond the Tracy-Widom margin).
        assert np.all(np.isnan(z)) or np.nanmean(np.abs(z)) < 2.0, (stat, z)
    assert all(rows[f"g{i}"]["num_spikes"] <= 1 for i in range(5))      # Tracy-Widom margin: 0 or 1
    spike = rows["spike"]
    assert spike["num_spikes"] >= 2
    assert spike["lambda_max_z"] > 20 and spike["mp_softrank_z"] < -10 and spike["stable_rank_z"] < -10
    # The shuffle destroys the rank-2 structure too: the spike stands out from that baseline as well.
    assert spike["lambda_max_shuffle_z"] > 20


def test_heavy_tailed_entries_match_their_shuffle_but_not_the_gaussian_null():
    """Student-t(3) entries, no correlations: a heavy ESD tail that shuffling reproduces."""
    rng = np.random.default_rng(4)
    mats = {f"t{i}": rng.standard_t(3, SHAPE).astype(np.float32) for i in range(6)}
    rows = matrix_esd_rows(mats, jax.random.key(1), num_draws=16, shuffle_draws=6)
    col = lambda c: np.array([rows[f"t{i}"][c] for i in range(6)])
    # Against the Gaussian null: eigenvalues far beyond the MP edge.
    assert np.median(col("lambda_max_z")) > 5 and np.median(col("mp_softrank_z")) < -3
    assert np.median(col("num_spikes")) >= 1 and np.median(col("num_spikes_pct")) > 90
    # The tail fit cannot tell these from Gaussian spectra on 64 eigenvalues: the Gaussian alpha is
    # 5.45 +- 1.77 (1000 draws), the observed median 5.44. So alpha sits inside its null.
    assert np.median(np.abs(col("alpha_z"))) < 2.0, col("alpha_z")
    # Against the shuffled copies: nothing left to explain. The shuffle reproduces most of each
    # departure from the Gaussian null. (z against the shuffle is a poor yardstick for lambda_max:
    # one huge entry dominates it, so the shuffle std is tiny and small differences give large z.)
    assert np.median(np.abs(col("alpha_shuffle_z"))) < 2.0, col("alpha_shuffle_z")
    for stat in ("lambda_max", "mp_softrank", "stable_rank"):
        explained = np.abs(col(stat) - col(f"{stat}_shuffle_mean")) / np.abs(col(stat) - col(f"{stat}_null_mean"))
        assert np.median(explained) < 0.5, (stat, explained)


@pytest.mark.slow
def test_nonfinite_matrices_give_nan_and_zero_matrices_a_defined_row():
    rng = np.random.default_rng(5)
    ok = rng.standard_normal(SHAPE).astype(np.float32)
    bad_nan, bad_inf = ok.copy(), ok.copy()
    bad_nan[3, 7] = np.nan
    bad_inf[0, 0] = np.inf
    mats = {"ok": ok, "nan": bad_nan, "inf": bad_inf, "zero": np.zeros(SHAPE, np.float32),
            "bf16": ok.astype(ml_dtypes.bfloat16)}
    rows = matrix_esd_rows(mats, jax.random.key(2), num_draws=4, shuffle_draws=2)
    for name in ("nan", "inf"):
        assert all(np.isnan(rows[name][stat]) for stat in ESD_STATISTICS), name
    alone = esd_statistics(sp.singular_values(ok), SHAPE)              # unaffected by its batch mates
    for stat in ESD_STATISTICS:
        assert np.isfinite(rows["ok"][stat]) and rows["ok"][stat] == pytest.approx(float(alone[stat]), rel=1e-5), stat
        assert rows["bf16"][stat] == pytest.approx(rows["ok"][stat], rel=0.05), stat
    zero = rows["zero"]
    assert zero["mp_scale"] == 0 and zero["bulk_edge"] == 0 and zero["lambda_max"] == 0
    assert all(np.isnan(zero[s]) for s in ("alpha", "alpha_ks", "xmin", "tail_fraction", "mp_softrank", "stable_rank",
                                           "num_spikes", "bulk_max", "alpha_weighted", "log_alpha_norm"))


@pytest.mark.slow
def test_columns_are_fixed_and_a_skipped_shuffle_is_nan():
    rng = np.random.default_rng(6)
    mats = {"a": rng.standard_normal((16, 40)).astype(np.float32), "b": rng.standard_normal((40, 16))}
    full = matrix_esd_rows(mats, jax.random.key(3), num_draws=4, shuffle_draws=2)
    skipped = matrix_esd_rows(mats, jax.random.key(3), num_draws=4, shuffle_draws=0)
    expected = [c for s in ESD_STATISTICS for c in (s, f"{s}_null_mean", f"{s}_null_std", f"{s}_z", f"{s}_pct",
                                                     f"{s}_diff", f"{s}_ratio", f"{s}_null_mean_se", f"{s}_null_std_se",
                                                     f"{s}_shuffle_mean", f"{s}_shuffle_std", f"{s}_shuffle_z")]
    for name in mats:
        assert list(full[name]) == expected and list(skipped[name]) == expected
        assert all(np.isnan(skipped[name][c]) for c in expected if "_shuffle_" in c)
        assert np.isfinite(full[name]["lambda_max_shuffle_mean"])
        for c in expected:
            if "_shuffle_" not in c:
                np.testing.assert_array_equal(full[name][c], skipped[name][c], err_msg=c)
    with pytest.raises(ValueError, match="shuffle_draws"):
        matrix_esd_rows(mats, jax.random.key(3), shuffle_draws=1)
    with pytest.raises(TypeError, match="'i'"):
        matrix_esd_rows({"i": np.ones((8, 8), np.int32)}, jax.random.key(3))
    with pytest.raises(ValueError, match="2-D"):
        matrix_esd_rows({"x": np.ones((2, 8, 8), np.float32)}, jax.random.key(3))


def test_too_few_eigenvalues_for_a_tail_gives_nan_alpha_only():
    s = np.linspace(3.0, 1.0, 4, dtype=np.float32)
    got = esd_statistics(s, (4, 32))
    assert np.isnan(got["alpha"]) and np.isnan(got["xmin"])
    assert np.isfinite(got["lambda_max"]) and np.isfinite(got["mp_scale"])
    with pytest.raises(AssertionError):
        esd_statistics(s, (5, 32))                     # s must have min(m, n) entries


@pytest.mark.slow
def test_one_compile_per_shape_across_calls():
    rng = np.random.default_rng(7)
    draw = lambda: {f"w{i}": rng.standard_normal((24, 72)).astype(np.float32) for i in range(3)}
    kernels = (esd_statistics, sp.singular_values, nulls._gaussian_null, nulls.shuffle_entries)
    matrix_esd_rows(draw(), jax.random.key(0), num_draws=4, shuffle_draws=2)
    before = [k._cache_size() for k in kernels]
    matrix_esd_rows(draw(), jax.random.key(1), num_draws=4, shuffle_draws=2)   # same shapes, new values
    assert [k._cache_size() for k in kernels] == before


def test_matrices_of_one_shape_share_one_pooled_null_at_their_own_scale():
    rng = np.random.default_rng(4)
    mats = {"a": rng.standard_normal((40, 24)).astype(np.float32) * 0.05, "b": rng.standard_normal((40, 24)).astype(np.float32)}
    rows = matrix_esd_rows(mats, jax.random.key(2), num_draws=4, shuffle_draws=0)
    a, b = rows["a"], rows["b"]
    assert a["alpha_null_mean"] == b["alpha_null_mean"] and a["num_spikes_null_std"] == b["num_spikes_null_std"]
    ms = {n: np.mean(np.square(w, dtype=np.float64)) for n, w in mats.items()}
    np.testing.assert_allclose(b["lambda_max_null_mean"] / a["lambda_max_null_mean"], ms["b"] / ms["a"], rtol=1e-5)
    # alpha_weighted = alpha log10(lambda_max): the null moves by alpha log10(rms^2) with the scale
    shift = a["alpha_null_mean"] * np.log10(ms["b"] / ms["a"])
    np.testing.assert_allclose(b["alpha_weighted_null_mean"] - a["alpha_weighted_null_mean"], shift, rtol=1e-3)
    for row in rows.values():   # and each sits inside it
        assert abs(row["alpha_weighted_z"]) < 4 and abs(row["lambda_max_z"]) < 4


def test_the_quantized_null_is_pooled_over_matrices_of_one_shape_and_storage():
    """As `rank`'s (`quantized.noise_groups`): three Q4_0 matrices of one shape at different scales
    share one quantized null resting on their 3 x 8 draws, at each one's own scale for the
    eigenvalue-valued statistics; a Q8_0 matrix of that shape gets its own null from its own 8
    draws; float storage leaves every column of the Gaussian null bit-identical."""
    from spectrax.io.gguf import quantize_roundtrip

    rng = np.random.default_rng(5)
    stored = {f"g{i}": quantize_roundtrip(c * rng.standard_normal((40, 64)).astype(np.float32), "Q4_0")
              for i, c in enumerate((0.1, 1.0, 3.0))}
    stored["h"] = quantize_roundtrip(rng.standard_normal((40, 64)).astype(np.float32), "Q8_0")
    kinds = {**dict.fromkeys(stored, "Q4_0"), "h": "Q8_0"}
    rows = matrix_esd_rows(stored, jax.random.key(2), num_draws=8, shuffle_draws=0, storage=kinds)
    q4 = [f"g{i}" for i in range(3)]
    for stat in ("alpha", "stable_rank", "mp_softrank"):
        assert len({float(rows[n][f"{stat}_null_mean"]) for n in q4}) == 1, stat
        assert float(rows["h"][f"{stat}_null_mean"]) != float(rows["g0"][f"{stat}_null_mean"]), stat
    # the pooled null's mean rests on 24 draws: its Monte Carlo error is 1/sqrt(24) of its std
    for n, draws in (("g0", 24), ("h", 8)):
        np.testing.assert_allclose(rows[n]["stable_rank_null_mean_se"], rows[n]["stable_rank_null_std"] / np.sqrt(draws), rtol=1e-4)
    ms = [np.mean(np.square(stored[n].astype(np.float64))) for n in q4]
    np.testing.assert_allclose([rows[n]["lambda_max_null_mean"] / m for n, m in zip(q4, ms)],
                               rows["g0"]["lambda_max_null_mean"] / ms[0], rtol=1e-5)
    for n in stored:  # Gaussian weights stored quantized sit inside their quantized null
        assert abs(rows[n]["stable_rank_z"]) < 4 and abs(rows[n]["lambda_max_z"]) < 4, n
    plain = matrix_esd_rows(stored, jax.random.key(2), num_draws=8, shuffle_draws=0)
    floats = matrix_esd_rows(stored, jax.random.key(2), num_draws=8, shuffle_draws=0, storage=dict.fromkeys(stored, "BF16"))
    for name in stored:
        for column, value in plain[name].items():
            np.testing.assert_array_equal(floats[name][column], value, err_msg=f"{name} {column}")
