"""The source's aggregations against hand computations."""

import numpy as np
import pytest

from spectrax.analyses.aggregate import group_means, layer_groups, layer_means, model_values, pseudo_bulk, relative_change


def _table():
    # 2 layers x 4 query heads, 2 KV heads (group size 2); one NaN head (non-finite weights).
    return {
        "layer": np.array([0, 0, 0, 0, 1, 1, 1, 1]),
        "head": np.array([0, 1, 2, 3, 0, 1, 2, 3]),
        "kv_head": np.array([0, 0, 1, 1, 0, 0, 1, 1]),
        "ssr": np.array([1.0, 3.0, 10.0, 20.0, 2.0, np.nan, 4.0, 8.0]),
        "ssr_null_mean": np.full(8, 5.0),
        "ssr_null_std": np.array([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]),
        "ssr_z": np.array([1.0, 2.0, 3.0, 4.0, 5.0, np.nan, 7.0, 8.0]),
    }


def test_layer_means_skip_nan_heads():
    per_layer = layer_means(_table(), ["ssr"])
    np.testing.assert_allclose(per_layer["ssr"], [(1 + 3 + 10 + 20) / 4, (2 + 4 + 8) / 3])
    # the null std of a mean over the layer's finite heads, taken as independent (no `ssr_layer_null_std` column)
    np.testing.assert_allclose(per_layer["ssr_null_std"], [1.0 / np.sqrt(4), 2.0 / np.sqrt(3)])


def test_pseudo_bulk_is_median_of_group_medians():
    per_layer, model = pseudo_bulk(_table(), "ssr")
    # layer 0 groups: median(1,3)=2, median(10,20)=15 -> 8.5; layer 1: median(2)=2, median(4,8)=6 -> 4
    np.testing.assert_allclose(per_layer, [8.5, 4.0])
    assert model == pytest.approx(np.median([2, 15, 2, 6]))


def test_model_values():
    table = _table()
    v = model_values(table, layer_means(table, ["ssr"]), "ssr")
    assert v["median_over_layers"] == pytest.approx(np.median([8.5, 14 / 3]))
    assert v["mean_over_layers"] == pytest.approx(np.mean([8.5, 14 / 3]))
    # the null of the mean over layers: the layers' null stds of their means (0.5, 2/sqrt(3)) combined
    layer_stds = np.array([0.5, 2 / np.sqrt(3)])
    assert v["pseudo_bulk"] == pytest.approx(4.0) and v["null_std"] == pytest.approx(np.sqrt(np.sum(layer_stds**2)) / 2)
    assert v["z"] == pytest.approx((v["mean_over_layers"] - 5.0) / v["null_std"])
    assert v["mean_z"] == pytest.approx(30 / 7)


def test_layer_means_use_the_analysis_null_of_a_layer_mean_where_given():
    table = {**_table(), "ssr_layer_null_std": np.array([0.7] * 4 + [0.9] * 4)}
    per_layer = layer_means(table, ["ssr"])
    np.testing.assert_allclose(per_layer["ssr_null_std"], [0.7, 0.9])
    np.testing.assert_allclose(per_layer["ssr_z"], (per_layer["ssr"] - 5.0) / np.array([0.7, 0.9]))


def test_effect_sizes_and_monte_carlo_errors_carry_up_to_the_model():
    table = {**_table(), "ssr_layer_null_std": np.array([0.7] * 4 + [0.9] * 4),
             "ssr_layer_null_std_se": np.array([0.07] * 4 + [0.2] * 4)}
    per_layer = layer_means(table, ["ssr"])
    np.testing.assert_allclose(per_layer["ssr_diff"], per_layer["ssr"] - 5.0)
    np.testing.assert_allclose(per_layer["ssr_ratio"], per_layer["ssr"] / 5.0)
    np.testing.assert_allclose(per_layer["ssr_null_std_se"], [0.07, 0.2])
    v = model_values(table, per_layer, "ssr")
    assert v["diff"] == pytest.approx(v["mean_over_layers"] - 5.0) and v["ratio"] == pytest.approx(v["mean_over_layers"] / 5)
    # first-order propagation through sqrt(0.7^2 + 0.9^2) / 2
    total = np.hypot(0.7, 0.9)
    assert v["null_std_se"] == pytest.approx(np.hypot(0.7 * 0.07, 0.9 * 0.2) / total / 2)
    assert v["resolved"] is True
    coarse = {**table, "ssr_layer_null_std_se": np.array([0.07] * 4 + [0.9] * 4)}   # layer 1's std unknown
    assert model_values(coarse, layer_means(coarse, ["ssr"]), "ssr")["resolved"] is False
    groups = group_means(per_layer, ["ssr"], [(0,), (1,)])
    np.testing.assert_allclose(groups["ssr_null_std_se"], [0.07, 0.2])


def test_the_null_means_own_monte_carlo_error_widens_every_z():
    """A null mean estimated from N draws is off by std / sqrt(N), independently of the observation,
    so the difference has variance std^2 + se^2: the z of a layer mean, of a group mean and of the
    model mean divide by that (`spectral.null_z`), the error carried up like the std's."""
    table = {**_table(), "ssr_layer_null_std": np.array([0.7] * 4 + [0.9] * 4),
             "ssr_layer_null_mean_se": np.array([0.7 / np.sqrt(8)] * 4 + [0.9 / np.sqrt(8)] * 4)}
    per_layer = layer_means(table, ["ssr"])
    np.testing.assert_allclose(per_layer["ssr_null_mean_se"], [0.7 / np.sqrt(8), 0.9 / np.sqrt(8)], rtol=1e-6)
    np.testing.assert_allclose(per_layer["ssr_z"], (per_layer["ssr"] - 5.0) / (np.array([0.7, 0.9]) * np.sqrt(1 + 1 / 8)))
    v = model_values(table, per_layer, "ssr")
    assert v["null_mean_se"] == pytest.approx(np.hypot(0.7, 0.9) / np.sqrt(8) / 2)
    assert v["z"] == pytest.approx((v["mean_over_layers"] - 5.0) / (v["null_std"] * np.sqrt(1 + 1 / 8)))
    groups = group_means(per_layer, ["ssr"], [(0, 1)])
    assert groups["ssr_z"][0] == pytest.approx(v["z"])
    # without a layer column, independent heads as for the std: the heads' errors over sqrt(finite heads)
    independent = {**_table(), "ssr_null_mean_se": np.full(8, 0.1)}
    per_layer = layer_means(independent, ["ssr"])
    np.testing.assert_allclose(per_layer["ssr_null_mean_se"], [0.1 / 2, 0.1 / np.sqrt(3)])
    np.testing.assert_allclose(per_layer["ssr_z"], (per_layer["ssr"] - 5.0)
                               / np.hypot([0.5, 2 / np.sqrt(3)], [0.1 / 2, 0.1 / np.sqrt(3)]))


def test_layer_groups_match_the_source_blocks():
    assert layer_groups(range(48)) == [tuple(range(0, 12)), tuple(range(12, 24)), tuple(range(24, 36)), tuple(range(36, 48))]
    assert [len(g) for g in layer_groups(range(10))] == [3, 3, 2, 2]
    assert layer_groups([0, 1], 4) == [(0,), (1,)]
    with pytest.raises(ValueError):
        layer_groups(range(4), 0)


def test_group_means_and_relative_change_reproduce_the_source_table():
    per_layer = {"layer": np.arange(8), "ssr": np.array([1, 3, 5, 7, 2, 2, 2, 2.0])}
    groups = group_means(per_layer, ["ssr"], layer_groups(range(8), 4))
    assert list(groups["group"]) == ["0-1", "2-3", "4-5", "6-7"]
    np.testing.assert_allclose(groups["ssr"], [2, 6, 2, 2])
    # the source's "improvement" for Qwen2.5 0.006852 -> DeepSeek-R1 0.006818 in layers 0-11
    assert relative_change(0.006852, 0.006818) == pytest.approx(0.00496, abs=1e-5)
    assert np.isnan(relative_change(0.0, 1.0))


def test_shown_z_hides_a_z_whose_null_is_not_resolved():
    from spectrax.analyses.aggregate import shown_z

    assert shown_z({"z": 3.0, "resolved": True}) == 3.0
    assert shown_z({"z": 3.0, "mean_z": 1.0, "resolved": False}, "mean_z") is None
    assert shown_z({"z": 3.0}) == 3.0  # no flag: an exact null
    assert shown_z({"a_z": -2.0, "a_resolved": False}, "a_z", "a_resolved") is None
