"""The analyses `spectrax analyze` knows by name, and how the chosen ones make one layer's rows.

Adding an analysis is one module that ends with `analysis = Analysis(...)` and one line in
`ANALYSES`; `collect`, `analyze`, `compare` and the command line loop over what they are given.
An `Analysis` value that is not registered can be passed wherever a name can.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence

import jax
import numpy as np

from spectrax.analyses import charge, esd, kernel, laws, quantized, rank
from spectrax.analyses.base import Analysis, LayerInput, Options, layer_key
from spectrax.analyses.spectra import whole_spectra
from spectrax.analyses.weights import layer_matrices
from spectrax.io.load import LAYER_PARTS

__all__ = ["ANALYSES", "DEFAULT", "GLOBAL_SLOT", "global_results", "layer_parts", "layer_results", "matrix_table",
           "resolve"]

# Append new analyses at the end: the order is the order of the report's sections within a table.
ANALYSES: Mapping[str, Analysis] = types.MappingProxyType(
    {a.name: a for a in (laws.analysis, rank.analysis, kernel.analysis, esd.analysis, charge.analysis)})
# What `spectrax analyze` runs unless told otherwise. `charge` balances every head and draws whole
# Gaussian heads for its nulls (a dense SVD per head and draw, and its own compiled programs): it
# runs when asked for (`--analyses laws,charge`).
DEFAULT: tuple[str, ...] = ("laws", "rank", "kernel", "esd")
GLOBAL_SLOT = 1 << 20  # the key slot of the embedding / output head


def resolve(analyses: Iterable[str | Analysis]) -> tuple[Analysis, ...]:
    """Names (or `Analysis` values) -> the analyses, registered ones in registry order, then the
    others in the given order; `ValueError` naming any unknown name."""
    requested = list(analyses)
    names = [a for a in requested if isinstance(a, str)]
    unknown = sorted(set(names) - set(ANALYSES))
    if unknown or not requested:
        raise ValueError(f"unknown analyses {unknown or requested}; available: {', '.join(ANALYSES)}")
    extra = [a for a in requested if isinstance(a, Analysis) and a.name not in names]
    chosen = [a for a in ANALYSES.values() if a.name in names or a in extra]
    return tuple(chosen + [a for a in extra if a not in chosen])


def layer_parts(analyses: Iterable[Analysis]) -> tuple[str, ...]:
    """The canonical layer parts (`spectrax.io.LAYER_PARTS` order) that any of `analyses` reads:
    what a run streams, so that no tensor is read that no chosen analysis needs."""
    wanted = set().union(*(a.reads for a in analyses))
    return tuple(part for part in LAYER_PARTS if part in wanted)


def _rows(analyses: Sequence[Analysis], inputs: LayerInput, options: Options, slot: int):
    """Each analysis on `inputs`: the columns merged (the first analysis keeps a shared column)
    and `{analysis: arrays}`."""
    merged: dict[str, np.ndarray] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for a in analyses:
        out = a.layer_rows(inputs, layer_key(options, a, slot), options)
        merged.update({c: v for c, v in out.rows.items() if c not in merged})
        if out.arrays:
            arrays[a.name] = dict(out.arrays)
    return merged, arrays


def _matrix_inputs(matrices: Mapping[str, np.ndarray], layer: int | None, options: Options,
                   storage: Mapping[str, str] | None, analyses: Sequence[Analysis], params: dict | None = None,
                   spec=None) -> LayerInput:
    """The `LayerInput` of `matrices` (stored dtype, cropped), with their `whole_spectra`, computed
    once, when any of `analyses` reads them."""
    if options.crop is not None:
        matrices = {name: w[: options.crop, : options.crop] for name, w in matrices.items()}
    spectra = whole_spectra(matrices) if matrices and any(a.spectra for a in analyses) else None
    return LayerInput(layer=layer, params=params, matrices=matrices, storage=storage, spec=spec, spectra=spectra)


def _matrix_rows(merged: dict[str, np.ndarray], storage: Mapping[str, str] | None,
                 matrices: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The table's leading columns, then the analyses'; with `storage`, each matrix's `storage`
    type and `quant_error`, its rounding error estimated from its block scales (whole matrices)."""
    keys = {c: merged.pop(c) for c in ("matrix", "rows", "cols")}
    if storage is not None:
        keys["storage"] = np.array([storage.get(name, "") for name in matrices], dtype=object)
        keys["quant_error"] = np.array([quantized.block_scale_error(w, storage.get(name), axis=quantized.stored_axis(name))
                                        for name, w in matrices.items()], np.float32)
    return {**keys, **merged}


def layer_results(params: dict, layer: int, analyses: Sequence[Analysis], options: Options,
                  storage: Mapping[str, str] | None = None, spec=None) -> dict[str, dict[str, np.ndarray]]:
    """All chosen analyses of one streamed layer (`params` leaves `(1, ...)`): `{"heads": ...,
    "matrices": ..., <analysis>: {name: array}}`, the tables present as the analyses need them;
    `storage` as in `matrix_table`; `spec` the checkpoint's `ModelSpec` (`charge` needs it)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    by_table = {t: [a for a in analyses if a.table == t] for t in ("heads", "matrices")}
    matrices = {}
    if by_table["matrices"]:
        matrices = dict(layer_matrices(jax.tree.map(lambda x: x[0], params)))  # views, no copy
    inputs = _matrix_inputs(matrices, layer, options, storage, by_table["matrices"], params, spec)
    if by_table["heads"]:
        heads, arrays = _rows(by_table["heads"], inputs, options, layer)
        H = len(next(iter(heads.values())))
        out["heads"] = {"layer": np.full(H, layer), "head": np.arange(H),
                        **{c: v for c, v in heads.items() if c not in ("layer", "head")}}
        out.update(arrays)
    if by_table["matrices"]:
        table, arrays = _rows(by_table["matrices"], inputs, options, layer)
        out["matrices"] = {"layer": np.full(len(matrices), layer), **_matrix_rows(table, storage, matrices)}
        out.update(arrays)
    return out


def global_results(matrices: Mapping[str, np.ndarray], analyses: Sequence[Analysis], options: Options,
                   storage: Mapping[str, str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per-matrix analyses of the token embedding and untied output head (layer -1)."""
    chosen = [a for a in analyses if a.table == "matrices"]
    if not chosen:
        return {}
    table, arrays = _rows(chosen, _matrix_inputs(matrices, None, options, storage, chosen), options, GLOBAL_SLOT)
    return {"matrices": {"layer": np.full(len(matrices), -1), **_matrix_rows(table, storage, matrices)}, **arrays}


def matrix_table(matrices: dict[str, np.ndarray], keys: Mapping[str, jax.Array], *, num_draws: int,
                 shuffle_draws: int = 0, storage: Mapping[str, str] | None = None) -> dict[str, np.ndarray] | None:
    """Rank and/or esd columns side by side for named 2-D matrices (`matrix`, `rows`, `cols`, then
    each statistic with its null columns); `keys` maps "rank"/"esd" to the PRNG key of each analysis
    to run. Where both report a statistic (`stable_rank`), rank's column is kept. With `storage`
    (`{matrix: storage type}`), a `storage` column, and rank's quantization-aware nulls."""
    if not keys:
        return None
    options = Options(num_draws=num_draws, shuffle_draws=shuffle_draws)
    chosen = resolve(keys)
    inputs = _matrix_inputs(matrices, None, options, storage, chosen)
    merged: dict[str, np.ndarray] = {}
    for a in chosen:
        merged.update({c: v for c, v in a.layer_rows(inputs, keys[a.name], options).rows.items() if c not in merged})
    return _matrix_rows(merged, storage, matrices) if merged else None
