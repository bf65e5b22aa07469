"""Figures for per-head tables: layer x head heatmaps and per-layer trends against the null band."""

from __future__ import annotations

import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from spectrax.report.tables import Table  # noqa: E402

__all__ = ["head_heatmap", "layer_trend", "matrix_heatmap"]

# z-scores: blue below the null, red above; cells with no value (NaN) in grey, not white (= z 0).
_DIVERGING = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.8")


def _grid(table: Table, column: str) -> np.ndarray:
    layers, heads = np.asarray(table["layer"]), np.asarray(table["head"])
    ids = np.unique(layers)
    grid = np.full((len(ids), heads.max() + 1), np.nan)
    grid[np.searchsorted(ids, layers), heads] = np.asarray(table[column], float)
    return grid


def head_heatmap(table: Table, column: str, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Layer x head heatmap of `column`; a z-score column gets a symmetric diverging scale."""
    grid = _grid(table, column)
    ids = np.unique(np.asarray(table["layer"]))
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * grid.shape[1] + 2), max(3, 0.3 * grid.shape[0] + 1.5)))
    if column.endswith("_z"):
        bound = max(3.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 3.0)
        im = ax.imshow(grid, aspect="auto", cmap=_DIVERGING, vmin=-bound, vmax=bound, interpolation="nearest")
    else:
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=column)
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_yticks(range(len(ids)), [str(i) for i in ids]) if len(ids) <= 40 else None
    ax.set_title(title or column)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def layer_trend(table: Table, stat: str, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Per-layer mean over heads of `stat`, with the null mean and a ±2 null-std band."""
    layers = np.asarray(table["layer"])
    ids = np.unique(layers)
    per_layer = lambda c: np.array([np.nanmean(np.asarray(table[c], float)[layers == i]) for i in ids])
    observed, null_mean, null_std = per_layer(stat), per_layer(f"{stat}_null_mean"), per_layer(f"{stat}_null_std")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.fill_between(ids, null_mean - 2 * null_std, null_mean + 2 * null_std, color="0.8", label="random null ±2σ")
    ax.plot(ids, null_mean, color="0.4", lw=1, ls="--", label="random null mean")
    ax.plot(ids, observed, "o-", color="C3", label=f"{stat} (mean over heads)")
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(stat)
    ax.set_title(title or stat)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def matrix_heatmap(table: Table, column: str, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Layer x matrix heatmap of a z-score column of the rank table (rows: layers, -1 = embeddings)."""
    layers = np.asarray(table["layer"])
    names = list(dict.fromkeys(np.asarray(table["matrix"]).tolist()))
    ids = np.unique(layers)
    grid = np.full((len(ids), len(names)), np.nan)
    for layer, name, value in zip(layers, table["matrix"], np.asarray(table[column], float)):
        grid[np.searchsorted(ids, layer), names.index(name)] = value
    bound = max(3.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 3.0)
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names) + 2), max(3, 0.3 * len(ids) + 1.5)))
    im = ax.imshow(grid, aspect="auto", cmap=_DIVERGING, vmin=-bound, vmax=bound, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=column)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(ids)), ["emb" if i < 0 else str(i) for i in ids]) if len(ids) <= 40 else None
    ax.set_ylabel("layer")
    ax.set_title(title or column)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
