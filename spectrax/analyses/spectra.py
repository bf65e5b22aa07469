"""The singular values of a layer's whole 2-D matrices, computed once for every analysis that reads them.

`rank` and `esd` both start from the spectrum of every whole matrix of a layer (and `esd`'s figure
draws one of them), which at the size of a large model's layer is nearly all their time: a
13824 x 5120 matrix takes tens of CPU-seconds, its null draws (`gaussian_spectrum_draws`) next to
nothing. So the registry computes `whole_spectra` once per layer when a chosen analysis declares
`Analysis.spectra`, and hands it to each in `LayerInput.spectra`.

Memory stays near one stored layer plus one decomposition: matrices are decomposed batch by batch
(`batches`: a shape's matrices together when their float copies fit in `budget_bytes`, else one at
a time, so each shape still compiles one program), handed over in their stored dtype (the program
upcasts bf16 itself, so no float32 copy is held beside its own), each batch dropped once its
spectrum and mean square are taken.
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


def batches(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, np.dtype],
            budget_bytes: int = BUDGET_BYTES) -> list[list[str]]:
    """The names of `shapes` in decomposition batches: each group of one shape (`shape_groups`) and
    stored dtype (`dtypes`) whole when its float copies (4 bytes an entry, 8 for float64) fit in
    `budget_bytes`, else one matrix per batch; so every batch of a shape has one size (one compile)."""
    out = []
    for shape, names in shape_groups(shapes):
        by_dtype: dict[np.dtype, list[str]] = {}
        for name in names:
            by_dtype.setdefault(np.dtype(dtypes[name]), []).append(name)
        for dtype, group in by_dtype.items():
            whole = len(group) * (8 if dtype == np.float64 else 4) * int(np.prod(shape)) <= budget_bytes
            out += [group] if whole else [[name] for name in group]
    return out


def whole_spectra(matrices: Mapping[str, np.ndarray], budget_bytes: int = BUDGET_BYTES) -> WholeSpectra:
    """`WholeSpectra` of named 2-D matrices `{name: (m, n)}` (any float dtype), decomposed in `batches`
    under `budget_bytes`. A batch goes to the decomposition in its stored dtype (bf16/f16/fp8 are
    upcast to float32 inside it, exactly), so no float32 copy of it is held beside the program's own.
    `TypeError`/`ValueError` naming a matrix that is not a real floating 2-D array."""
    matrices = {name: np.asarray(w) for name, w in matrices.items()}
    for name, w in matrices.items():
        float_matrix(name, w[:0, :0] if w.ndim == 2 else w)  # checks dtype and rank, copies nothing
    s, mean_square = {}, {}
    for names in batches({n: w.shape for n, w in matrices.items()}, {n: w.dtype for n, w in matrices.items()},
                         budget_bytes):
        # (B, m, n) in the stored dtype; a lone matrix as a view, not a copy
        batch = matrices[names[0]][None] if len(names) == 1 else np.stack([matrices[name] for name in names])
        ms = np.mean(np.square(batch, dtype=np.float64), axis=(-2, -1))  # exact squares of the stored values
        values = np.asarray(sp.singular_values(batch, method="qr"))  # whole matrices: the (k, k) SVD dominates
        del batch
        for j, name in enumerate(names):
            s[name], mean_square[name] = values[j], ms[j]
    return WholeSpectra({name: s[name] for name in matrices}, {name: mean_square[name] for name in matrices})
