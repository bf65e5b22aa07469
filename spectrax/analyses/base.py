"""What an analysis is: a value of pure functions (`Analysis`), the statistics settings they share
(`Options`), what one layer gives (`LayerInput` -> `LayerOutput`), the tables of a whole run
(`Tables`), and the description of a report section (`Section`, `Plot`, `Spectrum`).

An analysis is built like optax's `GradientTransformation`: a NamedTuple of functions, made once
per module (`spectrax.analyses.laws.analysis`, ...) and listed in `spectrax.analyses.registry`.
Nothing here reads or writes files: `spectrax.run` streams checkpoints and stores results,
`spectrax.report` draws the figures and writes the tables a `Section` describes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from spectrax.analyses.tables import ColumnTable, Table
from spectrax.io.load import LAYER_PARTS

__all__ = ["Analysis", "LayerInput", "LayerOutput", "Options", "Plot", "Section", "Spectrum", "Tables", "layer_key"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """Settings that change the numbers: Monte Carlo draws of the Gaussian nulls (0: none; the
    statistics and their exact nulls only, Monte Carlo null columns NaN), PRNG seed,
    `crop` (rank, esd: top-left block only), `top_k` (kernel: subspace dimension) and
    `shuffle_draws` (esd: entry-shuffled baselines, each a full SVD of the matrix).

    Checked on construction; a bad value is one `ValueError` naming the command-line option.
    """

    num_draws: int = 16
    seed: int = 0
    crop: int | None = None
    top_k: int = 16
    shuffle_draws: int = 4

    def __post_init__(self):
        def whole(name: str, flag: str, value, low: int, what: str) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} (--{flag}) must be {what}, got {value!r}")

        whole("num_draws", "null-draws", self.num_draws, 0, "0 (no Monte Carlo nulls) or a whole number >= 2")
        if self.num_draws == 1:
            raise ValueError("num_draws (--null-draws) must be 0 (no Monte Carlo nulls) or >= 2 for a null std, got 1")
        whole("seed", "seed", self.seed, 0, "a whole number >= 0")
        if self.crop is not None:
            whole("crop", "crop", self.crop, 1, "a positive whole number of rows and columns")
        whole("top_k", "top-k", self.top_k, 1, "a positive whole number")
        whole("shuffle_draws", "shuffle-draws", self.shuffle_draws, 0, "0 (skip) or a whole number >= 2")
        if self.shuffle_draws == 1:
            raise ValueError("shuffle_draws (--shuffle-draws) must be 0 (skip) or >= 2 for a std, got 1")


class LayerInput(NamedTuple):
    """What an analysis sees of one layer (or of the embedding and output head: `layer=None`).

    `params`: the canonical layer as `stream_layers` yields it, leaves `(1, ...)` (None for the
    globals); `matrices`: its whole 2-D weights by name (`attn.q (H*D, E)`, ..., cropped to
    `Options.crop`; in the stored dtype, views where possible: `weights.float_matrix` upcasts one);
    `storage`: each matrix's stored type (`"BF16"`, `"Q4_0"`, ...) or None;
    `spec`: the checkpoint's `ModelSpec` (rotary dimension, q/k norms), None where unknown;
    `spectra`: the singular values and mean squares of `matrices` (`spectra.WholeSpectra`), computed
    once per layer when a chosen analysis declares `Analysis.spectra`, else None.
    """

    layer: int | None
    params: dict | None
    matrices: Mapping[str, np.ndarray]
    storage: Mapping[str, str] | None = None
    spec: Any = None
    spectra: Any = None


class LayerOutput(NamedTuple):
    """One layer's rows, `{column: (rows,)}` (one row per query head or per matrix, in the order
    of `LayerInput.matrices`), and arrays kept beside the table (`{name: array}`, e.g. the kernel's
    `(H, E, k)` subspace bases); both are stored with the layer when a run can be resumed."""

    rows: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray] = {}


@dataclasses.dataclass(frozen=True)
class Tables:
    """`heads`: one row per (layer, query head) (laws and kernel columns); `matrices`: one row per
    (layer, weight matrix), layer -1 for the embedding and output head (rank and esd columns);
    `arrays`: `{analysis: {layer: {name: array}}}`, what each analysis kept per layer. Absent
    analyses leave `None` (or no entry). Each table is a `ColumnTable`, a dict of columns with
    `.to_pandas()` (`tables.heads.to_pandas()`, the `pandas` extra)."""

    heads: ColumnTable | None
    matrices: ColumnTable | None
    arrays: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("heads", "matrices"):
            table = getattr(self, name)
            if table is not None and not isinstance(table, ColumnTable):
                object.__setattr__(self, name, ColumnTable(table))

    @property
    def kernel_bases(self) -> np.ndarray | None:
        """`(layers, H, E, k)` top-k key-side QK-kernel subspaces, when the layers share a shape."""
        kept = self.arrays.get("kernel", {})
        bases = [kept[layer]["basis"] for layer in sorted(kept)]
        same_shape = bases and all(b.shape == bases[0].shape for b in bases)
        return np.stack(bases) if same_shape else None


class Plot(NamedTuple):
    """A figure to draw: `spectrax.report.plots.<kind>(*args, path, **kwargs)`, saved as
    `plots/<name>.png`."""

    kind: str
    name: str
    args: tuple
    kwargs: Mapping[str, Any] = {}


class Spectrum(NamedTuple):
    """Singular values `s` of one matrix of shape `shape`, to be drawn against Marchenko-Pastur:
    `layer`'s `matrix` (`"attn.q"`, `"mlp.up"`, ...), query head `head` or None (the whole
    matrix), and why it was chosen; with `bulk_max` and `num_spikes`, WeightWatcher's MP bulk edge
    (units of s^2) and spike count as `esd` reports them, which the figure marks."""

    layer: int
    matrix: str
    head: int | None
    why: str
    s: np.ndarray
    shape: tuple[int, int]
    bulk_max: float | None = None
    num_spikes: int | None = None

    @property
    def name(self) -> str:
        return f"spectrum_L{self.layer}_{self.matrix}" + (f"_h{self.head}" if self.head is not None else "")

    @property
    def title(self) -> str:
        head = f" head {self.head}" if self.head is not None else ""
        return f"layer {self.layer} {self.matrix}{head} ({self.why})"

    def to_json(self) -> dict:
        return {"layer": self.layer, "matrix": self.matrix, "head": self.head, "why": self.why,
                "file": f"plots/{self.name}.png"}


@dataclasses.dataclass(frozen=True)
class Section:
    """An analysis's part of a report: Markdown `text`, tables written beside it
    (`{file name: table}`), figures, the spectra drawn against Marchenko-Pastur, and Markdown for
    the report's appendix after every section (`appendix`, empty for none)."""

    text: str
    tables: Mapping[str, Table] = dataclasses.field(default_factory=dict)
    plots: tuple[Plot, ...] = ()
    spectra: tuple[Spectrum, ...] = ()
    appendix: str = ""


class Analysis(NamedTuple):
    """One analysis as a value of pure functions.

    Attributes:
      name: what `--analyses` calls it.
      table: `"heads"` (one row per query head) or `"matrices"` (one row per weight matrix, the
        embedding and output head included).
      layer_rows: `(LayerInput, key, Options) -> LayerOutput`, the statistics of one layer.
      summarize: `(Tables, ModelSpec, Options) -> summary`, a frozen dataclass with `to_json()`.
      render: `summary -> Section`.
      key_id: folded into the PRNG key with the layer, so an analysis gives the same numbers
        whichever others run beside it; distinct per analysis.
      headline: statistics averaged per layer and per layer group (`layers.csv`, `groups.csv`)
        and compared across checkpoints.
      spread: statistics whose coefficient of variation over a layer's heads goes in `layers.csv`.
      reads: the parts of the canonical layer (`spectrax.io.LAYER_PARTS`: `attn`, `mlp`, `norms`)
        that `layer_rows` reads from `LayerInput.params`, or whose whole matrices it reads from
        `LayerInput.matrices`. A run streams only the union over its analyses (`--analyses laws`
        never reads an MLP tensor); the default, every part, is always safe.
      spectra: whether `layer_rows` reads `LayerInput.spectra`, the singular values of every whole
        matrix: computed once per layer and shared by every analysis that declares it (`rank`, `esd`).
    """

    name: str
    table: str
    layer_rows: Callable[[LayerInput, jax.Array, Options], LayerOutput]
    summarize: Callable[..., Any]
    render: Callable[[Any], Section]
    key_id: int
    headline: tuple[str, ...] = ()
    spread: tuple[str, ...] = ()
    reads: tuple[str, ...] = LAYER_PARTS
    spectra: bool = False


def layer_key(options: Options, analysis: Analysis, slot: int) -> jax.Array:
    """The PRNG key of `analysis` at `slot` (a layer, or the embedding's slot): it depends only on
    (seed, analysis, slot)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(options.seed), analysis.key_id), slot)
