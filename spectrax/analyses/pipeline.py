"""Stream a checkpoint once and run every chosen analysis on each layer: the per-head and
per-matrix tables behind `spectrax analyze`.

Each layer is read once, whatever the number of analyses, and dropped before the next is read,
so memory does not grow with depth. Given a `RunFolder`, every finished layer is stored as a part,
and a rerun after an interruption reads those parts back instead of recomputing them.

Random keys depend only on (seed, analysis, layer): an analysis gives the same numbers whether it
runs alone or beside others, and whether its layer was computed now or in an interrupted run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from spectrax.analyses.esd import matrix_esd_rows
from spectrax.analyses.kernel import kernel_layer
from spectrax.analyses.laws import laws_layer
from spectrax.analyses.rank import matrix_rank_rows
from spectrax.analyses.weights import global_matrices, layer_matrices, matrix_columns, matrix_storage
from spectrax.io.load import Source, open_source, stream_layers
from spectrax.report.output import RunFolder
from spectrax.report.tables import concat, short_list

__all__ = ["ANALYSES", "Options", "Tables", "check_analyses", "collect", "parse_layers", "layer_results", "global_results",
           "matrix_table"]

ANALYSES = ("laws", "rank", "kernel", "esd")
MAX_LAYERS = 100_000  # far above any model; bounds what a mistyped --layers range can cost
_PER_HEAD = ("laws", "kernel")
_PER_MATRIX = ("rank", "esd")
_GLOBAL_LAYER = 1 << 20  # the key slot of the embedding / output head


@dataclasses.dataclass(frozen=True)
class Options:
    """Settings that change the numbers: Monte Carlo draws of the Gaussian nulls, PRNG seed,
    `crop` (rank, esd: top-left block only), `top_k` (kernel: subspace dimension) and
    `shuffle_draws` (esd: entry-shuffled baselines, each a full SVD of the matrix)."""

    num_draws: int = 16
    seed: int = 0
    crop: int | None = None
    top_k: int = 16
    shuffle_draws: int = 4

    def __post_init__(self):
        def whole(name: str, flag: str, value, low: int, what: str) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} (--{flag}) must be {what}, got {value!r}")

        whole("num_draws", "null-draws", self.num_draws, 2, "a whole number >= 2 (a null std needs two draws)")
        whole("seed", "seed", self.seed, 0, "a whole number >= 0")
        if self.crop is not None:
            whole("crop", "crop", self.crop, 1, "a positive whole number of rows and columns")
        whole("top_k", "top-k", self.top_k, 1, "a positive whole number")
        whole("shuffle_draws", "shuffle-draws", self.shuffle_draws, 0, "0 (skip) or a whole number >= 2")
        if self.shuffle_draws == 1:
            raise ValueError("shuffle_draws (--shuffle-draws) must be 0 (skip) or >= 2 for a std, got 1")


@dataclasses.dataclass(frozen=True)
class Tables:
    """`heads`: one row per (layer, query head) (laws and kernel columns); `matrices`: one row per
    (layer, weight matrix), layer -1 for the embedding and output head (rank and esd columns);
    `kernel_bases`: `(layers, H, E, k)` top-k key-side QK-kernel subspaces, when the layers share
    a shape. Absent analyses leave `None`."""

    heads: dict[str, np.ndarray] | None
    matrices: dict[str, np.ndarray] | None
    kernel_bases: np.ndarray | None


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


def check_analyses(analyses: Iterable[str]) -> tuple[str, ...]:
    """The requested analyses in canonical order; `ValueError` naming any unknown one."""
    requested = list(analyses)
    unknown = sorted(set(requested) - set(ANALYSES))
    if unknown or not requested:
        raise ValueError(f"unknown analyses {unknown or requested}; available: {', '.join(ANALYSES)}")
    return tuple(a for a in ANALYSES if a in requested)


def _key(options: Options, analysis: str, slot: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(options.seed), ANALYSES.index(analysis)), slot)


def matrix_table(matrices: dict[str, np.ndarray], keys: Mapping[str, jax.Array], *, num_draws: int,
                 shuffle_draws: int = 0, storage: Mapping[str, str] | None = None) -> dict[str, np.ndarray] | None:
    """Rank and/or esd columns side by side for named 2-D matrices (`matrix`, `rows`, `cols`, then
    each statistic with its null columns); `keys` maps "rank"/"esd" to the PRNG key of each analysis
    to run. Where both report a statistic (`stable_rank`), rank's column is kept. With `storage`
    (`{matrix: storage type}`), a `storage` column, and rank's quantization-aware nulls."""
    shapes = {name: tuple(w.shape) for name, w in matrices.items()}
    merged: dict[str, np.ndarray] = {}
    if "rank" in keys:
        rows = matrix_rank_rows(matrices, keys["rank"], num_draws=num_draws, storage=storage)
        merged.update(matrix_columns(rows, shapes))
    if "esd" in keys:
        rows = matrix_esd_rows(matrices, keys["esd"], num_draws=num_draws, shuffle_draws=shuffle_draws)
        merged.update({c: v for c, v in matrix_columns(rows, shapes).items() if c not in merged})
    if storage is not None and merged:
        stored = np.array([storage.get(name, "") for name in matrices], dtype=object)
        merged = {"matrix": merged.pop("matrix"), "rows": merged.pop("rows"), "cols": merged.pop("cols"),
                  "storage": stored, **merged}
    return merged or None


def _matrix_table(matrices: dict[str, np.ndarray], slot: int, analyses: Sequence[str],
                  options: Options, storage: Mapping[str, str] | None = None) -> dict[str, np.ndarray] | None:
    """`matrix_table` of the chosen analyses, each matrix cropped once (`options.crop`); `slot` is
    the layer (or the embedding's slot) in the random keys."""
    if options.crop is not None:
        matrices = {name: w[: options.crop, : options.crop] for name, w in matrices.items()}
    keys = {a: _key(options, a, slot) for a in ("rank", "esd") if a in analyses}
    return matrix_table(matrices, keys, num_draws=options.num_draws, shuffle_draws=options.shuffle_draws,
                        storage=storage)


def layer_results(params: dict, layer: int, analyses: Sequence[str], options: Options,
                  storage: Mapping[str, str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """All chosen analyses of one unstacked canonical layer: `{"heads": ..., "matrices": ...,
    "kernel_basis": {"basis": (H, E, k)}}` (groups present as the analyses need them); `storage`
    as in `matrix_table`."""
    out: dict[str, dict[str, np.ndarray]] = {}
    if any(a in analyses for a in _PER_HEAD):
        heads: dict[str, np.ndarray] = {}
        if "laws" in analyses:
            heads.update(laws_layer(params["attn"], _key(options, "laws", layer), num_draws=options.num_draws))
        if "kernel" in analyses:
            rows, basis = kernel_layer(params["attn"], params["mlp"], _key(options, "kernel", layer),
                                       top_k=options.top_k, num_draws=options.num_draws)
            heads.update({c: v for c, v in rows.items() if c not in heads})
            out["kernel_basis"] = {"basis": np.asarray(basis, np.float32)}
        H = len(next(iter(heads.values())))
        out["heads"] = {"layer": np.full(H, layer), "head": np.arange(H),
                        **{c: v for c, v in heads.items() if c not in ("layer", "head")}}
    if any(a in analyses for a in _PER_MATRIX):
        table = _matrix_table(dict(layer_matrices(params)), layer, analyses, options, storage)
        out["matrices"] = {"layer": np.full(len(table["matrix"]), layer), **table}
    return out


def global_results(source: Source, analyses: Sequence[str], options: Options) -> dict[str, dict[str, np.ndarray]]:
    """Per-matrix analyses of the token embedding and untied output head (layer -1)."""
    if not any(a in analyses for a in _PER_MATRIX):
        return {}
    table = _matrix_table(global_matrices(source), _GLOBAL_LAYER, analyses, options, matrix_storage(source, None))
    return {"matrices": {"layer": np.full(len(table["matrix"]), -1), **table}}


def collect(
    source: Source | str,
    *,
    analyses: Iterable[str] = ANALYSES,
    layers: Iterable[int] | None = None,
    options: Options = Options(),
    folder: RunFolder | None = None,
    progress: bool = True,
    part_prefix: str = "",
) -> Tables:
    """Run `analyses` over the chosen layers (default all) of a checkpoint, streaming it once.

    With `folder`, finished layers are stored in it and layers stored by an earlier, interrupted
    run with the same settings are read back instead of recomputed; parts are named
    `<part_prefix>layer-<i>` (a prefix lets two checkpoints share one folder).
    """
    analyses = check_analyses(analyses)
    if not isinstance(source, Source):
        source = open_source(source)
    chosen = list(range(source.spec.num_layers)) if layers is None else sorted(set(layers))
    bad = [i for i in chosen if not 0 <= i < source.spec.num_layers]
    if bad:
        raise ValueError(f"layers {short_list(bad)} out of range for a {source.spec.num_layers}-layer model (--layers)")
    with_globals = any(a in analyses for a in _PER_MATRIX)
    names = (["globals"] if with_globals else []) + [f"layer-{i:05d}" for i in chosen]
    names = [part_prefix + n for n in names]
    results: dict[str, dict] = {}
    if folder is not None:
        results = {name: folder.load(name) for name in names if folder.has(name)}
    bar = tqdm(total=len(names), initial=len(results), desc=source.name, unit="part", disable=not progress)

    def finish(name: str, result: dict) -> None:
        if folder is not None:
            folder.save(name, result)
        results[name] = result
        bar.update(1)

    try:  # closed on an interruption too, so a message printed after it starts on its own line
        if with_globals and f"{part_prefix}globals" not in results:
            finish(f"{part_prefix}globals", global_results(source, analyses, options))
        todo = [i for i in chosen if f"{part_prefix}layer-{i:05d}" not in results]
        for block in stream_layers(source, layers=todo):
            (layer,) = block.layer_ids
            params = jax.tree.map(lambda x: x[0], block.params)
            finish(f"{part_prefix}layer-{layer:05d}",
                   layer_results(params, layer, analyses, options, matrix_storage(source, layer)))
    finally:
        bar.close()
    ordered = [results[name] for name in names]

    def table(group: str) -> dict[str, np.ndarray] | None:
        parts = [r[group] for r in ordered if group in r]
        return concat(parts) if parts else None

    bases = [r["kernel_basis"]["basis"] for r in ordered if "kernel_basis" in r]
    same_shape = bases and all(b.shape == bases[0].shape for b in bases)
    return Tables(heads=table("heads"), matrices=table("matrices"),
                  kernel_bases=np.stack(bases) if same_shape else None)
