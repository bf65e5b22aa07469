"""Stream a checkpoint once and run every chosen analysis on each layer: the per-head and
per-matrix tables behind `spectrax analyze`.

Each layer is read once, whatever the number of analyses, and dropped before the next is read,
so memory does not grow with depth. Given a store (a `RunFolder`), every finished layer is
stored as a part, and a rerun after an interruption reads those parts back instead of
recomputing them.

Random keys depend only on (seed, analysis, layer): an analysis gives the same numbers whether it
runs alone or beside others, and whether its layer was computed now or in an interrupted run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from spectrax.analyses.base import Analysis, Options, Tables
from spectrax.analyses.registry import ANALYSES, global_results, layer_parts, layer_results, resolve
from spectrax.analyses.tables import concat, short_list
from spectrax.analyses.weights import global_matrices, matrix_storage
from spectrax.io.load import Source, open_source, stream_layers

__all__ = ["MAX_LAYERS", "Store", "collect", "parse_layers"]

MAX_LAYERS = 100_000  # far above any model; bounds what a mistyped --layers range can cost
_TABLES = ("heads", "matrices")


class Store(Protocol):
    """Where finished parts (`{group: {column: array}}`) are kept: `spectrax.run.store.RunFolder`."""

    def has(self, name: str) -> bool: ...

    def load(self, name: str) -> dict[str, dict[str, np.ndarray]]: ...

    def save(self, name: str, arrays: Mapping[str, Mapping[str, np.ndarray]]) -> None: ...


def parse_layers(text: str | None) -> list[int] | None:
    """A command line's layer selection, `"0,2,5-7"` -> `[0, 2, 5, 6, 7]`; empty -> `None` (all).

    Ranges run upwards and stay below `MAX_LAYERS`, so a typo cannot ask for billions of layers.
    """
    if not text:
        return None
    layers: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not (lo.isdigit() and (hi.isdigit() or not hi)) or len(lo) > 7 or len(hi) > 7:
            raise ValueError(f"bad --layers entry {part.strip()!r}; use layer numbers and ranges, e.g. 0,4-7")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise ValueError(f"bad --layers entry {part.strip()!r}: the range runs backwards (write {last}-{first})")
        if last >= MAX_LAYERS:
            raise ValueError(f"bad --layers entry {part.strip()!r}: no model has {last + 1} layers")
        layers.extend(range(first, last + 1))
    return layers


def collect(
    source: Source | str,
    *,
    analyses: Iterable[str | Analysis] = tuple(ANALYSES),
    layers: Iterable[int] | None = None,
    options: Options = Options(),
    folder: Store | None = None,
    progress: bool = True,
    part_prefix: str = "",
) -> Tables:
    """Run `analyses` (names, or `Analysis` values) over the chosen layers (default all) of a
    checkpoint, streaming it once.

    With `folder`, finished layers are stored in it and layers stored by an earlier, interrupted
    run with the same settings are read back instead of recomputed; parts are named
    `<part_prefix>layer-<i>` (a prefix lets two checkpoints share one folder).

    Args:
      source: a checkpoint path or Hub repo id, or an opened `Source`.
      analyses: registered names (`laws`, `rank`, `kernel`, `esd`) or `Analysis` values.
      layers: layer numbers to visit (default all).
      options: the settings that change the numbers (null draws, seed, crop, top_k, shuffle draws).
      folder: a `Store` keeping each finished layer, for resuming.
      progress: show a progress bar.
      part_prefix: prefix of the stored parts' names.

    Returns:
      `Tables`: `heads` (one row per layer and query head), `matrices` (one row per weight matrix),
      `arrays` (what each analysis kept per layer); None where no chosen analysis fills a table.

    Raises:
      ValueError: a layer out of range.

    Examples:
        >>> import spectrax as sx
        >>> tables = sx.collect(sx.data.TINY_LLAMA, analyses=["laws"], layers=[0],
        ...                     options=sx.Options(num_draws=4), progress=False)
        >>> len(tables.heads["layer"]), tables.matrices     # layer 0's 4 query heads; no per-matrix analysis
        (4, None)
        >>> tables.heads["kv_head"]                           # GQA: query head h reads KV head h // 2
        array([0, 0, 1, 1])
        >>> [c for c in tables.heads if c.startswith("pearson_qk")][:3]    # each statistic beside its null
        ['pearson_qk', 'pearson_qk_null_mean', 'pearson_qk_null_std']
    """
    analyses = resolve(analyses)
    if not isinstance(source, Source):
        source = open_source(source)
    chosen = list(range(source.spec.num_layers)) if layers is None else sorted(set(layers))
    bad = [i for i in chosen if not 0 <= i < source.spec.num_layers]
    if bad:
        raise ValueError(f"layers {short_list(bad)} out of range for a {source.spec.num_layers}-layer model (--layers)")
    with_globals = any(a.table == "matrices" for a in analyses)
    slots = ([("globals", -1)] if with_globals else []) + [(f"layer-{i:05d}", i) for i in chosen]
    slots = [(part_prefix + name, layer) for name, layer in slots]
    results: dict[str, dict] = {}
    if folder is not None:
        results = {name: folder.load(name) for name, _ in slots if folder.has(name)}
    bar = tqdm(total=len(slots), initial=len(results), desc=source.name, unit="part", disable=not progress)

    def finish(name: str, result: dict) -> None:
        if folder is not None:
            folder.save(name, result)
        results[name] = result
        bar.update(1)

    try:  # closed on an interruption too, so a message printed after it starts on its own line
        if with_globals and f"{part_prefix}globals" not in results:
            finish(f"{part_prefix}globals",
                   global_results(global_matrices(source), analyses, options, matrix_storage(source, None)))
        todo = [i for i in chosen if f"{part_prefix}layer-{i:05d}" not in results]
        for block in stream_layers(source, layers=todo, parts=layer_parts(analyses)):
            (layer,) = block.layer_ids
            finish(f"{part_prefix}layer-{layer:05d}",
                   layer_results(block.params, layer, analyses, options, matrix_storage(source, layer), source.spec))
    finally:
        bar.close()

    def table(group: str) -> dict[str, np.ndarray] | None:
        parts = [results[name][group] for name, _ in slots if group in results[name]]
        return concat(parts) if parts else None

    arrays = {a.name: {layer: results[name][a.name] for name, layer in slots if a.name in results[name]}
              for a in analyses}
    return Tables(heads=table("heads"), matrices=table("matrices"), arrays={k: v for k, v in arrays.items() if v})
