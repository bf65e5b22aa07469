"""Quantization-aware nulls: a matrix stored in a GGUF block type is compared with Gaussian noise
stored the same way, in the per-head nulls (laws, kernel) as in the per-matrix ones (esd, rank);
a float model's nulls are the very same numbers; `quant_error` is the weights' rounding error."""

import jax
import numpy as np
import pytest

import spectrax as sx
from spectrax.analyses import esd, kernel, laws, quantized
from spectrax.io.gguf import quantize_roundtrip
from spectrax.io.gguf_export import write_gguf
from spectrax.run import Options, collect
from tests.conftest import CHECKPOINTS

_OPTIONS = Options(num_draws=4, shuffle_draws=0)
_NULLS = ("_null_mean", "_null_std")


def _tables(path):
    return collect(path, analyses=["laws", "kernel", "esd"], options=_OPTIONS, progress=False)


def _null_columns(table) -> list[str]:
    return [c for c in table if c.endswith(_NULLS)]


def test_block_scale_error_is_the_round_trip_error():
    w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    for kind in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        stored = quantize_roundtrip(w, kind)
        actual = np.linalg.norm(stored - w) / np.linalg.norm(w)
        assert quantized.block_scale_error(stored, kind) == pytest.approx(actual, rel=0.05), kind
        by_columns = quantize_roundtrip(w.T, kind).T  # W_O^T: the stored rows are its columns
        assert quantized.block_scale_error(by_columns, kind, axis=-2) == pytest.approx(actual, rel=0.05), kind
    for kind in ("F32", "BF16", "Q4_K", "", None):
        assert np.isnan(quantized.block_scale_error(w, kind))
    assert np.isnan(quantized.block_scale_error(w[:, :100], "Q4_0"))  # rows not whole blocks


def test_noise_goes_through_the_storage_round_trip_along_the_stored_rows():
    key = jax.random.key(0)
    assert quantized.noise_matrix(key, (64, 96), "F32") is None
    assert quantized.noise_matrix(key, (64, 96), "Q4_K") is None  # gguf only decodes K-types
    assert quantized.noise_matrix(key, (64, 90), "Q8_0") is None  # rows not whole blocks
    assert quantized.noise_matrix(key, (64, 90), "Q8_0", axis=-2) is not None  # 64 rows: whole blocks
    assert quantized.noise_matrix(key, (90, 64), "Q8_0", axis=-2) is None
    spectra, errors = quantized.noise_spectra(key, (2, 64, 96), "Q4_0", num_draws=3)
    assert spectra.shape == (3, 2, 64) and np.all(np.diff(spectra, axis=-1) <= 0)
    assert np.all((errors > 0.07) & (errors < 0.10))  # Q4_0 on Gaussian entries: ~8.6%
    _, errors = quantized.noise_spectra(key, (64, 96), "Q8_0", num_draws=3, axis=-2)
    assert np.all((errors > 0.003) & (errors < 0.008))  # Q8_0: ~0.5%
    rows = quantized.noise_matrix(key, (96, 64), "Q4_0")  # each 32-block of a row on its own grid
    blocks = rows.reshape(96, 2, 32)
    steps = np.max(np.abs(blocks), axis=-1, keepdims=True) / 8
    np.testing.assert_allclose(blocks / steps, np.round(blocks / steps), atol=1e-3)


def _attn(seed=0, H=4, KV=2, D=16, E=64):
    rng = np.random.default_rng(seed)
    return {m: (rng.standard_normal((1, n, D, E)) / np.sqrt(E)).astype(np.float32)
            for m, n in (("q", H), ("k", KV), ("v", KV))}


def test_float_and_undecodable_storage_leave_every_null_unchanged():
    attn, key = _attn(), jax.random.key(3)
    storage = {"attn.q": "F32", "attn.k": "BF16", "attn.v": "Q4_K", "m": "F16"}
    plain, tagged = laws._head_laws(attn, key, 4)[0], laws._head_laws(attn, key, 4, storage)[0]
    one = {m: x[0] for m, x in attn.items()}
    plain_k = kernel.kernel_layer(one, None, key, num_draws=4)[0]
    tagged_k = kernel.kernel_layer(one, None, key, num_draws=4, storage=storage)[0]
    matrix = {"m": one["q"].reshape(-1, 64)}
    plain_e = esd.matrix_esd_rows(matrix, key, num_draws=4, shuffle_draws=0)["m"]
    tagged_e = esd.matrix_esd_rows(matrix, key, num_draws=4, shuffle_draws=0, storage=storage)["m"]
    for got, want in ((tagged, plain), (tagged_k, plain_k), (tagged_e, plain_e)):
        assert got.keys() == want.keys()
        for c in want:
            np.testing.assert_array_equal(got[c], want[c], err_msg=c)


def test_quantized_heads_get_stand_ins_that_went_through_the_round_trip(monkeypatch):
    """A "format" that keeps 8 of 64 columns caps every stand-in's rank at 8: the laws, kernel and
    esd nulls of that matrix must show it (effective ranks ~15 and ~14 for Gaussians)."""
    attn, key = _attn(), jax.random.key(3)
    one = {m: x[0] for m, x in attn.items()}
    storage = dict.fromkeys(("attn.q", "attn.k", "attn.v", "m"), "Q4_0")
    monkeypatch.setattr(quantized, "quantize_roundtrip", lambda x, kind: x * (np.arange(x.shape[-1]) < 8))
    rows = laws._head_laws(attn, key, 4, storage)[0]
    assert np.all(rows["erank_q_null_mean"] < 8) and np.all(rows["erank_q_z"] > 10)
    kernel_rows = kernel.kernel_layer(one, None, key, num_draws=4, storage=storage)[0]
    assert np.all(kernel_rows["kernel_erank_null_mean"] < 8)
    esd_rows = esd.matrix_esd_rows({"m": one["q"].reshape(-1, 64)}, key, num_draws=4, shuffle_draws=0, storage=storage)
    assert esd_rows["m"]["stable_rank_null_mean"] < 0.6 * esd.matrix_esd_rows(
        {"m": one["q"].reshape(-1, 64)}, key, num_draws=4, shuffle_draws=0)["m"]["stable_rank_null_mean"]


@pytest.mark.slow
def test_gguf_models_nulls_float_unchanged_quantized_through_their_type(tmp_path):
    """End to end on GGUF files written with gguf.GGUFWriter: an F32 file gives the safetensors
    checkpoint's tables number for number; a Q4_0 file gets nulls of quantized noise, which
    move the scale-free statistics only within their Monte Carlo error (rounding of relative size
    eps adds nearly white noise: a Gaussian stays Gaussian-like, to O(eps^2)), and `quant_error`
    is the stored weights' true rounding error."""
    reference = _tables(CHECKPOINTS / "llama")
    f32 = _tables(write_gguf(CHECKPOINTS / "llama", tmp_path / "f32.gguf"))
    for table in ("heads", "matrices"):
        want, got = getattr(reference, table), getattr(f32, table)
        for c in _null_columns(want):
            np.testing.assert_array_equal(got[c], want[c], err_msg=c)
    model = sx.load(CHECKPOINTS / "llama")
    for kind, error in (("Q4_0", 0.086),):  # Q8_0 takes the same path (its ~0.5% error: above)
        tables = _tables(write_gguf(CHECKPOINTS / "llama", tmp_path / f"{kind}.gguf", qtype=kind))
        heads, matrices = tables.heads, tables.matrices
        assert set(matrices["storage"]) == {kind}
        changed = [c for c in _null_columns(heads) if not np.array_equal(heads[c], f32.heads[c], equal_nan=True)]
        assert {"erank_q_null_mean", "pearson_qk_null_mean", "kernel_erank_null_mean"} <= set(changed)
        for c in ("erank_q", "stable_rank_q", "pearson_qk", "kernel_erank"):
            moved = np.abs(heads[f"{c}_null_mean"] - f32.heads[f"{c}_null_mean"])
            assert np.all(moved < 4 * f32.heads[f"{c}_null_std"] / np.sqrt(_OPTIONS.num_draws)), (kind, c)
        row = int(np.flatnonzero((matrices["layer"] == 1) & (matrices["matrix"] == "attn.q"))[0])
        q = np.asarray(model.params["layers"][0]["attn"]["q"][1], np.float64).reshape(-1, 64)
        actual = np.linalg.norm(quantize_roundtrip(q.astype(np.float32), kind) - q) / np.linalg.norm(q)
        assert matrices["quant_error"][row] == pytest.approx(actual, rel=0.1)
        assert matrices["quant_error"][row] == pytest.approx(error, rel=0.3)


def test_whole_matrix_kernel_null_agrees_in_law_with_the_bartlett_null(monkeypatch):
    """With a lossless "format" the quantized kernel null draws plain Gaussian heads: its means
    must match `kernel_null`'s exact-in-law Bartlett draws within Monte Carlo error, scale included."""
    attn = {m: x[0] * s for (m, x), s in zip(_attn(seed=1).items(), (1.0, 3.0, 1.0))}
    key = jax.random.key(5)
    assert kernel.quantized_kernel_null(key, attn["q"], attn["k"], {"attn.q": "F32"}, num_draws=4) is None
    monkeypatch.setattr(quantized, "quantize_roundtrip", lambda x, kind: x)
    whole = kernel.quantized_kernel_null(key, attn["q"], attn["k"], {"attn.q": "Q8_0"}, num_draws=64)
    bartlett = kernel.kernel_null(key, attn["q"], attn["k"], num_draws=64)
    for name in kernel.KERNEL_STATISTICS:
        a, b = whole[name], bartlett[name]
        error = np.sqrt(np.asarray(a.std) ** 2 + np.asarray(b.std) ** 2) / np.sqrt(64)
        assert np.all(np.abs(np.asarray(a.mean) - np.asarray(b.mean)) < 5 * error), name
