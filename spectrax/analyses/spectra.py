"""The singular values of a layer's whole 2-D matrices, computed once for every analysis that reads them.

`rank` and `esd` both start from the spectrum of every whole matrix of a layer (and `esd`'s figure
draws one of them), which at the size of a large model's layer is nearly all their time: a
13824 x 5120 matrix takes tens of CPU-seconds, its null draws (`gaussian_spectrum_draws`) next to
nothing. So the registry computes `whole_spectra` once per layer when a chosen analysis declares
`Analysis.spectra`, and hands it to each in `LayerInput.spectra`.

Memory stays near one stored layer plus one decomposition: matrices are upcast to float32 only
batch by batch (`batches`: a shape's matrices together when their float copies fit in
`budget_bytes`, else one at a time, so each shape still compiles one program), and each copy is
dropped once its spectrum and mean square are taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from spectrax import spectral as sp
from spectrax.analyses.weights import float_matrix

__all__ = ["BUDGET_BYTES", "WholeSpectra", "batches", "shape_groups", "whole_spectra"]

BUDGET_BYTES = 256 << 20  # float copies decomposed at once: a 5120 x 5120 pair, not a 13824 x 5120 one


class WholeSpectra(NamedTuple):
    """Per matrix name: `s`, its singular values `(k,)`, `k = min(m, n)`, descending (Householder
    QR then the `(k, k)` SVD: `spectral.singular_values(method="qr")`), float32 (float64 for a
    float64 matrix under x64); `mean_square`, the float64 mean of its squared entries (the squared
    RMS the nulls are scaled to)."""

    s: Mapping[str, np.ndarray]
    mean_square: Mapping[str, np.float64]


def shape_groups(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[tuple[int, int], list[str]]]:
    """`[(shape, names)]`: the names of `shapes` (`{name: (m, n)}`) grouped by shape, shapes sorted,
    names in their given order. The unit `rank` and `esd` batch their statistics and pool their nulls by."""
    groups: dict[tuple[int, int], list[str]] = {}
    for name, shape in shapes.items():
        groups.setdefault(tuple(int(d) for d in shape), []).append(name)
    return sorted(groups.items())


def batches(shapes: Mapping[str, tuple[int, ...]], itemsize: Mapping[str, int] | int = 4,
            budget_bytes: int = BUDGET_BYTES) -> list[list[str]]:
    """The names of `shapes` in decomposition batches: each shape group (`shape_groups`, further split
    by `itemsize`, the bytes per entry of each matrix's float copy) whole when its copies fit in
    `budget_bytes`, else one matrix per batch; so every batch of a shape has one size (one compile)."""
    sizes = itemsize if isinstance(itemsize, Mapping) else dict.fromkeys(shapes, itemsize)
    out = []
    for shape, names in shape_groups(shapes):
        by_size: dict[int, list[str]] = {}
        for name in names:
            by_size.setdefault(int(sizes[name]), []).append(name)
        for size, group in by_size.items():
            whole = len(group) * size * int(np.prod(shape)) <= budget_bytes
            out += [group] if whole else [[name] for name in group]
    return out


def whole_spectra(matrices: Mapping[str, np.ndarray], budget_bytes: int = BUDGET_BYTES) -> WholeSpectra:
    """`WholeSpectra` of named 2-D matrices `{name: (m, n)}` (any float dtype; bf16/f16/fp8 upcast to
    float32 one batch at a time, `batches` under `budget_bytes`). `TypeError`/`ValueError` naming a
    matrix that is not a real floating 2-D array."""
    shapes, itemsize = {}, {}
    for name, w in matrices.items():
        w = np.asarray(w)
        float_matrix(name, w[:0, :0] if w.ndim == 2 else w)  # checks dtype and rank, copies nothing
        shapes[name], itemsize[name] = w.shape, (8 if w.dtype == np.float64 else 4)
    s, mean_square = {}, {}
    for names in batches(shapes, itemsize, budget_bytes):
        batch = np.stack([float_matrix(name, matrices[name]) for name in names])  # (B, m, n)
        ms = np.mean(np.square(batch, dtype=np.float64), axis=(-2, -1))
        values = np.asarray(sp.singular_values(batch, method="qr"))  # whole matrices: the (k, k) SVD dominates
        del batch
        for j, name in enumerate(names):
            s[name], mean_square[name] = values[j], ms[j]
    return WholeSpectra({name: s[name] for name in matrices}, {name: mean_square[name] for name in matrices})
