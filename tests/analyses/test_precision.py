"""Third-law depth limits: hand computations per format, measured kappa, edge cases, bad input."""

import math

import ml_dtypes
import numpy as np
import pytest

from spectrax.analyses.precision import (
    FORMATS,
    TERMS,
    depth_limits,
    format_constants,
    precision_table,
)


def test_bfloat16_by_hand():
    out = depth_limits(0.01, 2.0, "bfloat16")
    assert out["format"] == "bfloat16" and out["mantissa_bits"] == 7
    assert out["L_quant"] == 3 * 2**14 == 49152
    assert out["max_finite"] == pytest.approx(3.3895e38, rel=1e-4)
    assert out["L_dyn"] == pytest.approx(128.0, abs=0.01)                  # log2(3.39e38) / log2(2)
    assert out["L_info"] == pytest.approx(100.0)
    assert out["L_max"] == pytest.approx(100.0) and out["binding"] == "info"
    smaller = depth_limits(0.001, 2.0, ml_dtypes.bfloat16)                  # L_info = 1000 > L_dyn
    assert smaller["L_max"] == pytest.approx(128.0, abs=0.01) and smaller["binding"] == "dyn"


def test_float16_and_float32_by_hand():
    f16 = depth_limits(0.5, 4.0, "float16")
    assert f16["mantissa_bits"] == 10 and f16["max_finite"] == 65504.0
    assert f16["L_quant"] == 3 * 2**20
    assert f16["L_dyn"] == pytest.approx(math.log2(65504.0) / 2)           # ~8.0 at kappa = 4
    assert f16["L_info"] == 2.0 and f16["binding"] == "info"
    f32 = depth_limits(1e-9, 2.0, np.float32)
    assert f32["mantissa_bits"] == 23 and f32["L_quant"] == 3 * 2.0**46
    assert f32["L_dyn"] == pytest.approx(128.0, rel=1e-8) and f32["binding"] == "dyn"
    e4m3 = depth_limits(1e-9, 2.0, "float8_e4m3fn")
    assert (e4m3["mantissa_bits"], e4m3["max_finite"], e4m3["L_quant"]) == (3, 448.0, 192.0)
    e5m2 = depth_limits(1e-9, 1e9, "float8_e5m2")                          # huge kappa: L_dyn < 1
    assert (e5m2["mantissa_bits"], e5m2["L_quant"]) == (2, 48.0) and e5m2["binding"] == "dyn"


def test_quantization_binds_when_ssr_is_tiny_and_kappa_near_one():
    out = depth_limits(1e-12, 1.0001, "float8_e5m2")
    assert out["L_max"] == 48.0 and out["binding"] == "quant"


def test_array_kappa_per_head_with_median_and_worst_head():
    kappa = np.array([[2.0, 4.0, 16.0], [np.nan, 1.0, 0.5]])
    out = depth_limits(0.001, kappa, "bfloat16")
    log2_max = math.log2(float(ml_dtypes.finfo(ml_dtypes.bfloat16).max))
    expected = np.array([[log2_max, log2_max / 2, log2_max / 4], [np.nan, np.inf, np.inf]])
    assert out["L_dyn"].shape == kappa.shape
    np.testing.assert_allclose(out["L_dyn"], expected)
    np.testing.assert_allclose(out["L_max"], np.minimum(expected, 1000.0))
    assert out["binding"].tolist() == [["dyn", "dyn", "dyn"], ["", "info", "info"]]
    # median over the five measured heads (NaN left out) is kappa = 2; the worst head is kappa = 16
    assert out["L_dyn_median"] == pytest.approx(log2_max) and out["binding_median"] == "dyn"
    assert out["L_dyn_min"] == pytest.approx(log2_max / 4) and out["L_max_min"] == pytest.approx(log2_max / 4)
    nothing = depth_limits(0.01, np.array([np.nan, np.nan]), "float16")
    assert np.isnan(nothing["L_dyn_median"]) and nothing["binding_median"] == "" and nothing["binding_min"] == ""


def test_unmeasured_inputs_propagate_nan_without_exceptions():
    out = depth_limits(float("nan"), 2.0, "bfloat16")
    assert np.isnan(out["L_info"]) and np.isnan(out["L_max"]) and out["binding"] == ""
    assert out["L_quant"] == 49152.0                                       # still defined
    out = depth_limits(0.0, 1.0, "float16")                                # no info or range limit
    assert out["L_info"] == math.inf and out["L_dyn"] == math.inf
    assert out["L_max"] == 3 * 2**20 and out["binding"] == "quant"
    assert np.isnan(depth_limits(0.1, float("nan"), "float16")["L_dyn"])


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="mean_ssr"):
        depth_limits(-0.1, 2.0, "bfloat16")
    with pytest.raises(ValueError, match="mean_ssr"):
        depth_limits(np.array([0.1, 0.2]), 2.0, "bfloat16")
    with pytest.raises(ValueError, match="kappa"):
        depth_limits(0.1, np.array([2.0, -3.0]), "bfloat16")
    with pytest.raises(ValueError, match="measured_kappa"):
        precision_table(0.1, measured_kappa=[3.0, -1.0])
    with pytest.raises(ValueError, match="kappa_fixed"):
        precision_table(0.1, kappa_fixed=[2.0, 3.0])
    for fmt in ("int8", "not_a_format", np.complex64, "int4"):
        with pytest.raises(ValueError, match="format"):
            format_constants(fmt)


def test_precision_table_fixed_and_measured_columns():
    measured = np.array([[30.0, 80.0], [np.nan, 500.0]])
    table = precision_table(0.02, measured_kappa=measured)
    assert list(table) == ["format", "mantissa_bits", "max_finite", "L_info", "L_quant", "kappa_fixed", "L_dyn_fixed",
                           "L_max_fixed", "binding_fixed", "kappa_measured", "L_dyn_measured", "L_max_measured",
                           "binding_measured", "L_dyn_measured_min", "L_max_measured_min"]
    assert table["format"].tolist() == list(FORMATS)
    assert table["mantissa_bits"].tolist() == [23, 7, 10, 3, 2]
    for i, fmt in enumerate(FORMATS):
        const = format_constants(fmt)
        log2_max = math.log2(const.max_finite)
        assert table["L_info"][i] == pytest.approx(50.0)
        assert table["L_quant"][i] == 3.0 * 4.0**const.mantissa_bits
        assert table["L_dyn_fixed"][i] == pytest.approx(log2_max)
        assert table["kappa_measured"][i] == 80.0                           # median of 30, 80, 500
        assert table["L_dyn_measured"][i] == pytest.approx(log2_max / math.log2(80.0))
        assert table["L_dyn_measured_min"][i] == pytest.approx(log2_max / math.log2(500.0))
        row = (table["L_info"][i], table["L_quant"][i], table["L_dyn_measured"][i])
        assert table["L_max_measured"][i] == min(row)
        assert table["binding_measured"][i] == TERMS[int(np.argmin(row))]
    # bf16 at kappa = 2 is limited by information (50 < 128); at the measured kappa, by range (~20)
    bf16 = table["format"].tolist().index("bfloat16")
    assert table["binding_fixed"][bf16] == "info" and table["binding_measured"][bf16] == "dyn"
    unmeasured = precision_table(0.02)
    assert np.isnan(unmeasured["L_dyn_measured"]).all() and np.isnan(unmeasured["kappa_measured"]).all()
    assert unmeasured["binding_measured"].tolist() == [""] * len(FORMATS)
    np.testing.assert_array_equal(unmeasured["L_max_fixed"], table["L_max_fixed"])
