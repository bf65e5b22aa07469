"""Whole-matrix rank statistics equal float64 numpy recomputations; nulls and crop behave."""

import jax
import numpy as np
import pytest

import spectrax as sx
from spectrax.run import Options, collect
from spectrax.analyses.rank import matrix_rank_rows
from tests.conftest import CHECKPOINTS


def rank_table(path, **options):
    return collect(path, analyses=["rank"], options=Options(**options), progress=False).matrices


def _np_stats(w: np.ndarray) -> dict:
    s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
    p = s / s.sum()
    p2 = s**2 / (s**2).sum()
    return {"erank": np.exp(-(p * np.log(p)).sum()), "erank_squared": np.exp(-(p2 * np.log(p2)).sum()),
            "max_mean": s[0] / s.mean(), "stable_rank": (s**2).sum() / s[0] ** 2, "sigma_max": s[0]}


@pytest.mark.slow
def test_rank_table_matches_numpy_on_every_matrix():
    table = rank_table(CHECKPOINTS / "phi3", num_draws=4)
    model = sx.load(CHECKPOINTS / "phi3")
    group = model.params["layers"][0]
    names = ["embed.tokens", "lm_head"] + [f"attn.{p}" for p in "qkvo"] + ["mlp.gate", "mlp.up", "mlp.down"]
    assert len(table["layer"]) == 2 + 7 * model.spec.num_layers
    for i, (layer, name) in enumerate(zip(table["layer"], table["matrix"])):
        assert name in names
        if layer < 0:
            w = model.params["embed"]["tokens"] if name == "embed.tokens" else model.params["lm_head"]["weight"]
        else:
            part, key = name.split(".")
            w = group[part][key][layer]
            w = w.reshape(-1, w.shape[-1])
        assert (table["rows"][i], table["cols"][i]) == w.shape
        for stat, value in _np_stats(w).items():
            np.testing.assert_allclose(table[stat][i], value, rtol=2e-4, err_msg=f"{layer} {name} {stat}")


def test_gaussian_matrices_sit_inside_their_null_and_structure_does_not():
    rng = np.random.default_rng(0)
    gaussian = {f"g{i}": 0.3 * rng.standard_normal((96, 160)).astype(np.float32) for i in range(6)}
    low_rank = rng.standard_normal((96, 4)) @ rng.standard_normal((4, 160)) + 0.01 * rng.standard_normal((96, 160))
    rows = matrix_rank_rows({**gaussian, "low": low_rank.astype(np.float32)}, jax.random.key(1), num_draws=32)
    for stat in ("erank", "stable_rank", "ks_mp", "ks_gauss", "sigma_max"):
        z = np.array([rows[f"g{i}"][f"{stat}_z"] for i in range(6)])
        assert np.abs(z).mean() < 2.0, (stat, z)
    # A rank-4 signal over weak noise: few effective dimensions, a huge top singular value. (Its
    # ESD bulk is still Marchenko-Pastur, so ks_mp only moves by ~4/96.)
    assert rows["low"]["erank_z"] < -10 and rows["low"]["max_mean_z"] > 10


def test_crop_reproduces_the_top_left_block_protocol():
    table = rank_table(CHECKPOINTS / "phi3", num_draws=4, crop=16)
    model = sx.load(CHECKPOINTS / "phi3")
    w = model.params["layers"][0]["mlp"]["up"][1]
    row = int(np.flatnonzero((table["layer"] == 1) & (table["matrix"] == "mlp.up"))[0])
    assert (table["rows"][row], table["cols"][row]) == (16, 16)
    np.testing.assert_allclose(table["erank"][row], _np_stats(w[:16, :16])["erank"], rtol=1e-4)


def test_quantized_matrices_get_nulls_that_went_through_the_same_quantization(monkeypatch):
    from spectrax.analyses import quantized
    from spectrax.io.gguf import quantize_roundtrip

    rng = np.random.default_rng(0)
    stored = {f"g{i}": quantize_roundtrip(0.3 * rng.standard_normal((96, 160)).astype(np.float32), "Q4_0") for i in range(4)}
    rows = matrix_rank_rows(stored, jax.random.key(1), num_draws=16, storage=dict.fromkeys(stored, "Q4_0"))
    for stat in ("erank", "stable_rank", "ks_mp", "ks_gauss", "sigma_max"):
        assert np.abs([rows[n][f"{stat}_z"] for n in stored]).mean() < 2.0, stat
    # Q4_0 on Gaussian entries: ~8.6% relative error (a 16-level grid over each 32-block's range).
    assert all(0.07 < rows[n]["quant_error_null"] < 0.10 for n in stored)
    # K-types have no quantizer in gguf: the Gaussian null, and no error estimate.
    plain = matrix_rank_rows(stored, jax.random.key(1), num_draws=16)
    k_type = matrix_rank_rows(stored, jax.random.key(1), num_draws=16, storage=dict.fromkeys(stored, "Q4_K"))
    assert np.isnan(k_type["g0"]["quant_error_null"]) and k_type["g0"]["erank_null_mean"] == plain["g0"]["erank_null_mean"]
    # The draws really pass through the storage type's round trip: a "format" that zeroes half of
    # the columns leaves 80 of 96 dimensions (effective rank ~68 instead of ~87), and the Gaussian
    # weight stands far above that null.
    monkeypatch.setattr(quantized, "quantize_roundtrip", lambda x, kind: x * (np.arange(x.shape[-1]) < x.shape[-1] // 2))
    halved = matrix_rank_rows(stored, jax.random.key(1), num_draws=16, storage=dict.fromkeys(stored, "Q4_0"))
    assert halved["g0"]["erank_null_mean"] < 0.85 * plain["g0"]["erank_null_mean"] and halved["g0"]["erank_z"] > 10


def test_the_quantized_null_is_pooled_over_matrices_of_one_shape_and_storage():
    """Four Q4_0 matrices of one shape at different scales share one quantized null resting on
    their 4 x 16 draws (its std's Monte Carlo error ~1/sqrt(2 * 63) of it, not ~1/sqrt(2 * 15)),
    scaled to each matrix for sigma_max; a Q8_0 matrix of that shape gets its own null; float
    storage leaves every column of the Gaussian null bit-identical."""
    from spectrax.io.gguf import quantize_roundtrip

    rng = np.random.default_rng(4)
    scales = (0.1, 0.3, 1.0, 3.0)
    stored = {f"g{i}": quantize_roundtrip(c * rng.standard_normal((64, 96)).astype(np.float32), "Q4_0")
              for i, c in enumerate(scales)}
    stored["h"] = quantize_roundtrip(rng.standard_normal((64, 96)).astype(np.float32), "Q8_0")
    kinds = {**dict.fromkeys(stored, "Q4_0"), "h": "Q8_0"}
    rows = matrix_rank_rows(stored, jax.random.key(2), num_draws=16, storage=kinds)
    q4 = [f"g{i}" for i in range(4)]
    for stat in ("erank", "ks_mp", "max_mean"):
        assert len({float(rows[n][f"{stat}_null_mean"]) for n in q4}) == 1, stat
        assert float(rows["h"][f"{stat}_null_mean"]) != float(rows["g0"][f"{stat}_null_mean"]), stat
    # erank's null is near Gaussian: the std's relative Monte Carlo error is ~1/sqrt(2 (N - 1))
    assert rows["g0"]["erank_null_std_se"] < 0.11 * rows["g0"]["erank_null_std"]  # N = 64, not 16
    assert rows["h"]["erank_null_std_se"] > 0.14 * rows["h"]["erank_null_std"]  # its own 16
    rms = [np.sqrt(np.mean(np.square(stored[n].astype(np.float64)))) for n in q4]
    np.testing.assert_allclose([rows[n]["sigma_max_null_mean"] / r for n, r in zip(q4, rms)],
                               rows["g0"]["sigma_max_null_mean"] / rms[0], rtol=1e-5)
    plain = matrix_rank_rows(stored, jax.random.key(2), num_draws=16)
    floats = matrix_rank_rows(stored, jax.random.key(2), num_draws=16, storage=dict.fromkeys(stored, "BF16"))
    for name in stored:
        assert np.isnan(floats[name].pop("quant_error_null"))
        assert floats[name].keys() == plain[name].keys()
        for column, value in plain[name].items():
            np.testing.assert_array_equal(floats[name][column], value, err_msg=f"{name} {column}")


@pytest.mark.slow
def test_matrices_of_one_shape_share_one_pooled_null():
    """Two (48, 24) matrices at different scales: one null, the draws of both behind it, scaled to each."""
    rng = np.random.default_rng(3)
    mats = {"a": rng.standard_normal((48, 24)).astype(np.float32) * 0.02,
            "b": rng.standard_normal((48, 24)).astype(np.float32), "c": rng.standard_normal((24, 12)).astype(np.float32)}
    rows = matrix_rank_rows(mats, jax.random.key(1), num_draws=6)
    for stat in ("erank", "stable_rank", "ks_mp"):
        assert rows["a"][f"{stat}_null_mean"] == rows["b"][f"{stat}_null_mean"]
        assert rows["a"][f"{stat}_null_mean_se"] < rows["c"][f"{stat}_null_mean_se"] * 1.5   # 12 draws vs 6
    rms = {n: np.sqrt(np.mean(np.square(w, dtype=np.float64))) for n, w in mats.items()}
    np.testing.assert_allclose(rows["b"]["sigma_max_null_mean"] / rows["a"]["sigma_max_null_mean"],
                               rms["b"] / rms["a"], rtol=1e-5)
