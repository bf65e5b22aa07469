"""Every plotting function returns a `Figure`, writes a file only when given a path, and leaves
pyplot's global state alone (no figure in its list, the backend and rcParams unchanged)."""

import inspect

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from spectrax.analyses.aggregate import layer_means
from spectrax.report import plots

HELPERS = {"subplots", "save_figure", "draw", "draw_spectrum"}  # not plotting functions themselves


def _heads(num_heads: int, num_layers: int, rng) -> dict:
    n = num_heads * num_layers
    z = rng.normal(0, 2, n)
    z[0] = 400.0  # a large |z|: the logarithmic colour scale
    return {"layer": np.repeat(np.arange(num_layers), num_heads), "head": np.tile(np.arange(num_heads), num_layers),
            "ssr_qk": rng.random(n), "ssr_qk_null_mean": np.full(n, 0.5), "ssr_qk_null_std": np.full(n, 0.1),
            "ssr_qk_z": z}


def _calls(num_heads: int, num_layers: int) -> dict:
    """One call per plotting function, keyed by its name: `(args, kwargs)`."""
    rng = np.random.default_rng(0)
    heads = _heads(num_heads, num_layers, rng)
    names = ["attn.q", "attn.k", "mlp.down"]
    matrices = {"layer": np.concatenate([[-1], np.repeat(np.arange(num_layers), 3)]),
                "matrix": np.array(["embed"] + names * num_layers, dtype=object)}
    matrices["erank_z"] = rng.normal(0, 5, len(matrices["layer"]))
    per_layer = layer_means(heads, ["ssr_qk"])
    similarity = rng.random((num_layers, num_layers))
    s = np.linalg.svd(rng.standard_normal((16, 64)), compute_uv=False)
    s_k = np.linalg.svd(rng.standard_normal((16, 64)), compute_uv=False)
    band = np.stack([0.9 * s, 1.1 * s]) / np.linalg.norm(s)
    return {
        "head_heatmap": ((heads, "ssr_qk_z"), {"title": "ssr_qk: z-score against Gaussian null"}),
        "layer_trend": ((heads, "ssr_qk"), {}),
        "matrix_heatmap": ((matrices, "erank_z"), {}),
        "similarity_heatmap": ((similarity, np.arange(num_layers)), {"chance": 0.05}),
        "spectrum_vs_mp": ((s, (16, 64)), {"title": "layer 0 attn.q head 0"}),
        "qk_spectra": ((s, s_k), {"band": band, "null": (0.01, 0.002), "labels": ("W_Q head 3", "W_K head 1"),
                                  "title": "layer 1: query head 3 and its key head 1 (largest |z| of ssr_qk)"}),
        "compare_trend": ((per_layer, per_layer, "ssr_qk"), {"labels": ("a", "b")}),
    }


def test_every_plotting_function_is_covered():
    public = {n for n in plots.__all__ if inspect.isfunction(getattr(plots, n))} - HELPERS
    assert public == set(_calls(4, 2))


@pytest.mark.parametrize("num_heads,num_layers", [(4, 3), (64, 48)])
def test_plots_return_figures_and_leave_pyplot_alone(tmp_path, num_heads, num_layers):
    backend, figures, rc = matplotlib.get_backend(), plt.get_fignums(), dict(matplotlib.rcParams)
    for name, (args, kwargs) in _calls(num_heads, num_layers).items():
        fig = getattr(plots, name)(*args, **kwargs)
        assert isinstance(fig, Figure), name
        assert list(tmp_path.iterdir()) == [], f"{name} wrote a file without a path"
        path = tmp_path / f"{name}.png"
        assert isinstance(getattr(plots, name)(*args, path=path, **kwargs), Figure)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        path.unlink()
    assert plt.get_fignums() == figures
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == rc


def test_heatmap_titles_fit_and_log_scales_say_so():
    args, kwargs = _calls(4, 3)["head_heatmap"]
    fig = plots.head_heatmap(*args, **kwargs)
    fig.draw_without_rendering()  # lays the figure out as savefig does (a bare canvas draws nothing)
    title = fig.axes[0].title
    box, width = title.get_window_extent(), fig.bbox.width
    assert box.x0 >= 0 and box.x1 <= width, "title cut off"
    bar = fig.axes[1]
    assert "log" in bar.get_ylabel()
    labels = [t for t in bar.get_yticklabels() if t.get_text()]
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.y0)
    assert all(lo.y1 <= hi.y0 for lo, hi in zip(boxes, boxes[1:])), "colour-bar tick labels overlap"


def test_qk_spectra_shows_the_q_and_k_spectra_the_statistic_compares():
    """Both normalized spectra are drawn and labelled, over the Gaussian band; the right panel's
    mean line is ssr_qk itself, beside its null band."""
    args, kwargs = _calls(4, 3)["qk_spectra"]
    s_q, s_k = args
    fig = plots.qk_spectra(*args, **kwargs)
    left, right = fig.axes
    lines = {line.get_label(): line.get_ydata() for line in left.get_lines()}
    np.testing.assert_allclose(lines["W_Q head 3"], s_q / np.linalg.norm(s_q))
    np.testing.assert_allclose(lines["W_K head 1"], s_k / np.linalg.norm(s_k))
    assert "Gaussian" in " ".join(left.get_legend_handles_labels()[1])
    ssr = np.mean(np.abs(s_q / np.linalg.norm(s_q) - s_k / np.linalg.norm(s_k)))
    mean_line = next(line for line in right.get_lines() if "ssr_qk" in line.get_label() and "null" not in line.get_label())
    np.testing.assert_allclose(mean_line.get_ydata(), ssr)
    assert any("null" in label for label in right.get_legend_handles_labels()[1])
    assert "query head 3" in fig.get_suptitle() and "key head 1" in fig.get_suptitle()


@pytest.mark.parametrize("num_heads,num_layers", [(4, 3), (64, 48)])
def test_legends_hide_no_data(num_heads, num_layers):
    """Every legend sits outside its axes (below, or beside stacked axes), so it covers no line."""
    for name, (args, kwargs) in _calls(num_heads, num_layers).items():
        fig = getattr(plots, name)(*args, **kwargs)
        fig.draw_without_rendering()  # lays the figure out as savefig does (a bare canvas's draw does not)
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:
                assert not legend.get_window_extent().overlaps(ax.get_window_extent()), f"{name}: legend over the data"
                box = legend.get_window_extent()
                assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, name


def test_the_layer_trend_band_is_the_null_of_the_layer_mean_not_of_one_head():
    """The band is null mean ± 2 std of the *layer mean* (the analysis's `_layer_null_std`, which
    counts heads sharing a K/V head; else the heads' std over sqrt(heads)), not the per-head std."""
    rng = np.random.default_rng(5)
    layer = np.repeat([0, 1, 2], 8)
    heads = {"layer": layer, "head": np.tile(np.arange(8), 3), "ssr_qk": rng.random(24),
             "ssr_qk_null_mean": np.full(24, 0.5), "ssr_qk_null_std": np.full(24, 0.1)}

    def band(table):
        fig = plots.layer_trend(table, "ssr_qk")
        (poly,) = fig.axes[0].collections
        y = poly.get_paths()[0].vertices[:, 1]
        return y.min(), y.max()

    assert band(heads) == pytest.approx((0.5 - 2 * 0.1 / np.sqrt(8), 0.5 + 2 * 0.1 / np.sqrt(8)))
    shared = {**heads, "ssr_qk_layer_null_std": np.full(24, 0.06)}  # heads sharing a draw: wider than 0.1/sqrt(8)
    assert band(shared) == pytest.approx((0.5 - 0.12, 0.5 + 0.12))
