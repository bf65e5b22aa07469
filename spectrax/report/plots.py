"""Figures: layer x head heatmaps, per-layer trends against the null band, layer x layer
similarity, spectra against Marchenko-Pastur, one head's Q and K spectra side by side, and A-vs-B
differences.

Every plotting function returns a `matplotlib.figure.Figure` (shown inline by a notebook) and
writes a PNG only when given a `path`. Figures are built with matplotlib's object API, never
pyplot: no global figure list, backend or rcParams is touched.
"""

from __future__ import annotations

import os
import textwrap

import matplotlib
import matplotlib.colors
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from spectrax import spectral as sp
from spectrax.analyses.aggregate import layer_means
from spectrax.analyses.base import Plot, Spectrum
from spectrax.analyses.tables import Table

__all__ = ["subplots", "save_figure", "head_heatmap", "layer_trend", "matrix_heatmap", "similarity_heatmap",
           "spectrum_vs_mp", "qk_spectra", "compare_trend", "draw", "draw_spectrum"]

# z-scores: blue below the null, red above; cells with no value (NaN) in grey, not white (= z 0).
_DIVERGING = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.8")


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             layout: str | None = None, **kwargs):
    """`(figure, axes)` like `pyplot.subplots`, without pyplot: a `Figure` no backend or global
    figure list knows about (so it never switches the user's backend, opens a window or leaks);
    `layout` is the figure's layout engine (this module's figures use `"constrained"`, which keeps
    colour bars and titles inside the figure; None: `save_figure` applies `tight_layout`), `kwargs`
    go to `Figure.subplots` (sharex, squeeze, height_ratios, gridspec_kw, ...)."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write (120 dpi) a figure, laid out first if it has no layout engine of its own."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=120)


def _done(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


def _wrap(text: str, width: float, fontsize: float = 10) -> str:
    """`text` wrapped to lines that fit `width` inches at `fontsize` points."""
    chars = max(16, int(width * 72 / (0.55 * fontsize)) - 4)
    return "\n".join(textwrap.wrap(text, chars))


def _set_title(ax, text: str, width: float, fontsize: float = 10) -> None:
    """A title wrapped to the axes' figure width (inches), so a narrow figure does not cut it."""
    ax.set_title(_wrap(text, width, fontsize), fontsize=fontsize)


def _legend_below(ax, ncols: int = 2) -> None:
    """The axes' legend under its x label, where it hides no data (constrained layout makes room)."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=ncols, frameon=False)


def _legend_beside(ax) -> None:
    """The axes' legend right of it (for axes stacked over one x axis, where below is the next axes)."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _heatmap_size(columns: int, rows: int) -> tuple[float, float]:
    """Inches for a heatmap of `columns` x `rows` cells and a colour bar: cells shrink past 40
    columns or rows, so 64 heads (or 80 layers) still fit a notebook's width (or a screen)."""
    return min(14.0, max(5.0, 0.3 * columns + 2.5)), min(12.0, max(3.5, 0.28 * rows + 1.8))


def _z_norm(grid: np.ndarray) -> matplotlib.colors.Normalize:
    """Symmetric colour scale for z-scores: linear within ±3 (what chance produces), logarithmic
    beyond when some |z| is large, so one extreme cell does not wash out the others."""
    bound = max(3.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 3.0)
    if bound <= 10:
        return matplotlib.colors.Normalize(vmin=-bound, vmax=bound)
    return matplotlib.colors.SymLogNorm(linthresh=3.0, linscale=1.0, vmin=-bound, vmax=bound, base=10)


def _z_colorbar(fig: Figure, im, ax, label: str, height: float) -> None:
    """Colour bar of a z-score heatmap `height` inches tall: ticks at 0, ±3, ±10, ... and ±the
    bound, those closer than a label's height to a kept one dropped; a logarithmic scale says so."""
    log = isinstance(im.norm, matplotlib.colors.SymLogNorm)
    bar = fig.colorbar(im, ax=ax, label=f"{label}\n(symlog: linear within ±3, log beyond)" if log else label)
    bound = im.norm.vmax
    gap = 0.2 / max(height - 1.0, 1.0)  # a tick label's height, as a fraction of the bar
    kept = [0.0, bound]
    for t in (3, 10, 30, 100, 300, 1000, 3000, 10000):
        if t < bound and all(abs(float(im.norm(t)) - float(im.norm(k))) >= gap for k in kept):
            kept.append(float(t))
    ticks = sorted({-t for t in kept if t} | set(kept))
    bar.set_ticks(ticks)
    bar.set_ticklabels([f"{t:.0f}" for t in ticks])
    bar.minorticks_off()


def _grid(table: Table, column: str) -> np.ndarray:
    layers, heads = np.asarray(table["layer"]), np.asarray(table["head"])
    ids = np.unique(layers)
    grid = np.full((len(ids), heads.max() + 1), np.nan)
    grid[np.searchsorted(ids, layers), heads] = np.asarray(table[column], float)
    return grid


def head_heatmap(table: Table, column: str, path: str | os.PathLike | None = None, *,
                 title: str | None = None) -> Figure:
    """Layer x head heatmap of `column`; a z-score column gets a symmetric diverging scale.
    Returns the figure; writes it to `path` when given."""
    grid = _grid(table, column)
    ids = np.unique(np.asarray(table["layer"]))
    size = _heatmap_size(grid.shape[1], grid.shape[0])
    fig, ax = subplots(figsize=size, layout="constrained")
    if column.endswith("_z"):
        im = ax.imshow(grid, aspect="auto", cmap=_DIVERGING, norm=_z_norm(grid), interpolation="nearest")
        _z_colorbar(fig, im, ax, column, size[1])
    else:
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, label=column)
    ax.set_xlabel("query head")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=16, integer=True))
    ax.set_ylabel("layer")
    _layer_ticks(ax, ids)
    _set_title(ax, title or column, size[0])
    return _done(fig, path)


def _labelled(ids: np.ndarray, most: int = 40) -> list[int]:
    """Which rows of a layer axis get a label: all up to `most` rows, else those of layers 0, 5,
    10, ... (a step of 2, 5, 10, 20, ...: about 20 labels); the embeddings' row (-1) always."""
    step = 1 if len(ids) <= most else next((s for s in (2, 5, 10, 20, 50, 100, 200, 500) if len(ids) <= 20 * s), 1000)
    return [r for r, i in enumerate(ids) if i < 0 or i % step == 0]


def _layer_ticks(ax, ids: np.ndarray) -> None:
    rows = _labelled(ids)
    ax.set_yticks(rows, ["emb" if ids[r] < 0 else str(ids[r]) for r in rows])


def layer_trend(table: Table, stat: str, path: str | os.PathLike | None = None, *,
                title: str | None = None) -> Figure:
    """Per-layer mean over heads of `stat`, with the null mean and a ±2 band of the null std *of the
    layer mean* (`aggregate.layer_means`), not of one head. Returns the figure; writes it to
    `path` when given."""
    per_layer = layer_means(table, [stat])
    ids, observed = per_layer["layer"], per_layer[stat]
    null_mean, null_std = per_layer[f"{stat}_null_mean"], per_layer[f"{stat}_null_std"]
    fig, ax = subplots(figsize=(6, 4), layout="constrained")
    ax.fill_between(ids, null_mean - 2 * null_std, null_mean + 2 * null_std, color="0.8",
                    label="random null of the layer mean ±2σ")
    ax.plot(ids, null_mean, color="0.4", lw=1, ls="--", label="random null mean")
    ax.plot(ids, observed, "o-", color="C3", label=f"{stat} (mean over heads)")
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(stat)
    _set_title(ax, title or stat, 6)
    _legend_below(ax)
    return _done(fig, path)


def matrix_heatmap(table: Table, column: str, path: str | os.PathLike | None = None, *,
                   title: str | None = None) -> Figure:
    """Layer x matrix heatmap of a z-score column of the rank table (rows: layers, -1 = embeddings).
    Returns the figure; writes it to `path` when given."""
    layers = np.asarray(table["layer"])
    names = list(dict.fromkeys(np.asarray(table["matrix"]).tolist()))
    ids = np.unique(layers)
    grid = np.full((len(ids), len(names)), np.nan)
    for layer, name, value in zip(layers, table["matrix"], np.asarray(table[column], float)):
        grid[np.searchsorted(ids, layer), names.index(name)] = value
    size = (min(14.0, max(5.0, 0.7 * len(names) + 2.5)), _heatmap_size(1, len(ids))[1] + 0.8)  # + rotated names
    fig, ax = subplots(figsize=size, layout="constrained")
    im = ax.imshow(grid, aspect="auto", cmap=_DIVERGING, norm=_z_norm(grid), interpolation="nearest")
    _z_colorbar(fig, im, ax, column, size[1] - 0.8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    _layer_ticks(ax, ids)
    ax.set_ylabel("layer")
    _set_title(ax, title or column, size[0])
    return _done(fig, path)


def similarity_heatmap(matrix: np.ndarray, layers: np.ndarray, path: str | os.PathLike | None = None, *,
                       chance: float, title: str | None = None) -> Figure:
    """Layer x layer similarity with the diagonal (always 1) masked, so the colour scale spends
    itself on the off-diagonal values; the chance level is marked on the colour bar and values are
    written in the cells of small matrices. Returns the figure; writes it to `path` when given."""
    grid = np.array(matrix, float)
    np.fill_diagonal(grid, np.nan)
    top = max(float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.0, 2 * chance, 0.05)
    fig, ax = subplots(figsize=(6.5, 5.5), layout="constrained")
    im = ax.imshow(grid, cmap=matplotlib.colormaps["magma"].with_extremes(bad="0.85"), vmin=0, vmax=top,
                   interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, label="Grassmann similarity (diagonal = 1, masked)")
    bar.ax.axhline(chance, color="c", lw=3)
    if len(layers) <= 12:
        for i in range(len(layers)):
            for j in range(len(layers)):
                if i != j and np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="w" if grid[i, j] < 0.6 * top else "k")
    ticks = _labelled(np.asarray(layers), most=24)
    ax.set_xticks(ticks, [str(layers[t]) for t in ticks])
    ax.set_yticks(ticks, [str(layers[t]) for t in ticks])
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    _set_title(ax, f"{title or 'layer x layer similarity'}; chance level {chance:.3g}: cyan line on the colour bar",
               6.5, fontsize=9)
    return _done(fig, path)


def spectrum_vs_mp(s: np.ndarray, shape: tuple[int, int], path: str | os.PathLike | None = None, *,
                   title: str | None = None, bulk_max: float | None = None, num_spikes: int | None = None) -> Figure:
    """The ESD of one matrix against its fitted Marchenko-Pastur law, on log axes so the bulk and
    the outliers both show: a histogram of log10 of `lambda = s^2 / max(m, n)` with the MP density,
    and the ranked eigenvalues against MP quantiles (spikes leave the diagonal at the top, a heavy
    tail bends away from it). `bulk_max` (units of s^2) and `num_spikes`: WeightWatcher's bulk edge and
    spike count (`esd`'s columns), drawn as the edge; without them, the median fit's edge. Returns
    the figure; writes it to `path` when given."""
    shape = tuple(int(d) for d in shape)
    lam = np.sort(np.asarray(sp.eigenvalues(s, shape), float))
    fit = sp.mp_fit(np.asarray(s, np.float32), shape)
    ratio, sigma2, edge = sp.aspect_ratio(shape), float(fit.sigma2), float(fit.lambda_plus)
    lo_edge = float(sp.mp_edges(ratio, sigma2)[0])
    positive = lam[lam > 0]
    fig, (left, right) = subplots(1, 2, figsize=(10.5, 4.4), layout="constrained")
    if positive.size:
        y = np.log10(positive)
        left.hist(y, bins=min(60, max(12, y.size // 4)), density=True, color="C0", alpha=0.6, label="eigenvalues s²/N")
        grid = np.linspace(np.log10(max(lo_edge, 1e-12 * edge)), np.log10(edge), 400)
        x = 10.0 ** grid
        left.plot(grid, np.asarray(sp.mp_density(x, ratio, sigma2)) * x * np.log(10), color="k", lw=1.5,
                  label=f"Marchenko-Pastur (σ²={sigma2:.3g})")
    if bulk_max is not None and bulk_max > 0:  # WeightWatcher's rule, in the plot's units of s^2 / N
        edge, spikes, rule = bulk_max / max(shape), int(num_spikes), "WeightWatcher bulk edge"
        left.axvline(np.log10(float(fit.lambda_plus)), color="0.5", ls=":", lw=1, label="median-fit edge (bulk_edge)")
    else:
        spikes, rule = int(fit.num_spikes), "median-fit bulk edge"
    left.axvline(np.log10(edge), color="C3", ls="--", lw=1, label=f"{rule}; {spikes} spikes above")
    left.set_xlabel("log10 λ")
    left.set_ylabel("density")
    _legend_below(left)
    probs = (np.arange(lam.size) + 0.5) / lam.size
    quantiles = np.asarray(sp.mp_quantile(probs, ratio, sigma2))
    keep = (lam > 0) & (quantiles > 0)
    right.loglog(quantiles[keep], lam[keep], ".", ms=3, color="C0", label="observed")
    span = [min(quantiles[keep].min(), lam[keep].min()), max(quantiles[keep].max(), lam[keep].max())] if keep.any() else [1e-3, 1]
    right.loglog(span, span, color="k", lw=1, label="= Marchenko-Pastur")
    right.axhline(edge, color="C3", ls="--", lw=1)
    narrow = span[1] / span[0] < 100
    for axis in (right.xaxis, right.yaxis):
        axis.set_minor_formatter(_minor_log_labels(span[1] / span[0]))
        if narrow:  # decimals beside the minor labels' decimals, not 10^-3 among 0.0005 and 0.002
            axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.2g}"))
    right.set_xlabel("Marchenko-Pastur quantile (log scale)")
    right.set_ylabel("observed eigenvalue (log scale)")
    _legend_below(right)
    fig.suptitle(title or "spectrum vs Marchenko-Pastur", fontsize=10)
    return _done(fig, path)


def _minor_log_labels(ratio: float) -> matplotlib.ticker.Formatter:
    """Minor tick labels of a log axis spanning `ratio`: 2x and 5x each power of ten under two
    decades (matplotlib's own labels every minor tick there, and they overlap), none beyond."""
    def label(v: float, _) -> str:
        lead = round(v / 10.0 ** np.floor(np.log10(v))) if v > 0 else 0
        return f"{v:.2g}" if ratio < 100 and lead in (2, 5) else ""

    return matplotlib.ticker.FuncFormatter(label)


def qk_spectra(s_q: np.ndarray, s_k: np.ndarray, path: str | os.PathLike | None = None, *,
               labels: tuple[str, str] = ("W_Q", "W_K"), band: np.ndarray | None = None,
               band_label: str = "Gaussian spectra of this shape", null: tuple[float, float] | None = None,
               title: str | None = None) -> Figure:
    """What `ssr_qk` (and `pearson_qk`) of one query head compare: the singular values `s_q (r,)` of
    W_Q,h and `s_k (r,)` of its W_K,g, each divided by its L2 norm (the scale-free shapes), by
    index (left), over `band (2, r)`, where unit-norm Gaussian spectra of that shape lie (lower
    and upper percentile per index, labelled `band_label`); and their absolute difference per index (right), whose mean
    is ssr, beside `null = (mean, std)`, ssr's Gaussian null, as its mean ±2σ. Returns the
    figure; writes it to `path` when given."""
    q, k = (np.asarray(s, np.float64) / np.linalg.norm(np.asarray(s, np.float64)) for s in (s_q, s_k))
    index = np.arange(1, q.size + 1)
    marker = "o" if q.size <= 32 else None
    fig, (left, right) = subplots(1, 2, figsize=(10.5, 4.2), layout="constrained")
    if band is not None and np.isfinite(band).all():
        left.fill_between(index, band[0], band[1], color="0.85", label=band_label)
    left.plot(index, q, marker=marker, ms=3, color="C0", label=labels[0])
    left.plot(index, k, marker=marker, ms=3, color="C3", label=labels[1])
    left.set_xlabel("singular value index (descending)")
    left.set_ylabel("s_i / ||s||₂")
    right.bar(index, np.abs(q - k), color="0.55", label="|Q − K| per index")
    right.axhline(np.mean(np.abs(q - k)), color="C3", lw=1.5, label="their mean: ssr_qk")
    if null is not None and np.isfinite(null).all():
        right.axhspan(null[0] - 2 * null[1], null[0] + 2 * null[1], color="C0", alpha=0.2, label="ssr_qk null ±2σ")
        right.axhline(null[0], color="C0", ls="--", lw=1, label="ssr_qk null mean")
    right.set_xlabel("singular value index (descending)")
    right.set_ylabel("|difference of normalized s_i|")
    for ax in (left, right):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        _legend_below(ax)
    fig.suptitle(_wrap(title or f"{labels[0]} and {labels[1]} spectra", 10.5), fontsize=10)
    return _done(fig, path)


def compare_trend(a: Table, b: Table, stat: str, path: str | os.PathLike | None = None, *,
                  labels: tuple[str, str], title: str | None = None) -> Figure:
    """Per-layer means of `stat` for two checkpoints over the null band (top) and their
    difference b - a against ±2 standard deviations of the difference of two null draws (bottom).
    Returns the figure; writes it to `path` when given."""
    layers = np.asarray(a["layer"], float)
    fig, (top, bottom) = subplots(2, 1, figsize=(8.5, 5.5), sharex=True, height_ratios=(3, 2), layout="constrained")
    null_mean = np.asarray(a[f"{stat}_null_mean"], float)
    null_std = np.asarray(a[f"{stat}_null_std"], float)
    top.fill_between(layers, null_mean - 2 * null_std, null_mean + 2 * null_std, color="0.85", label="random null ±2σ")
    top.plot(layers, np.asarray(a[stat], float), "o-", ms=3, color="C0", label=labels[0])
    top.plot(layers, np.asarray(b[stat], float), "s-", ms=3, color="C3", label=labels[1])
    top.set_ylabel(stat)
    _legend_beside(top)
    diff = np.asarray(b[stat], float) - np.asarray(a[stat], float)
    spread = np.sqrt(null_std ** 2 + np.asarray(b[f"{stat}_null_std"], float) ** 2)
    bottom.fill_between(layers, -2 * spread, 2 * spread, color="0.85", label="±2σ of a null difference")
    bottom.axhline(0, color="0.4", lw=1)
    bottom.plot(layers, diff, "o-", ms=3, color="C2", label=f"{labels[1]} − {labels[0]}")
    bottom.set_xlabel("layer")
    bottom.set_ylabel("difference")
    bottom.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _legend_beside(bottom)
    fig.suptitle(title or stat, fontsize=10)
    return _done(fig, path)


def draw(plot: Plot, folder: str | os.PathLike) -> str:
    """Draw an analysis's `Plot` into `folder/<plot.name>.png`; returns the path."""
    kinds = {f.__name__: f for f in (head_heatmap, layer_trend, matrix_heatmap, similarity_heatmap, spectrum_vs_mp,
                                     qk_spectra, compare_trend)}
    path = os.path.join(folder, f"{plot.name}.png")
    kinds[plot.kind](*plot.args, path=path, **plot.kwargs)
    return path


def draw_spectrum(spectrum: Spectrum, folder: str | os.PathLike) -> str:
    """`spectrum_vs_mp` of a `Spectrum` into `folder/<spectrum.name>.png`; returns the path."""
    path = os.path.join(folder, f"{spectrum.name}.png")
    spectrum_vs_mp(spectrum.s, spectrum.shape, path=path, title=spectrum.title, bulk_max=spectrum.bulk_max,
                   num_spikes=spectrum.num_spikes)
    return path
