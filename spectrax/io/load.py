"""Load a checkpoint into the canonical pytree, whole (`load`) or one layer at a time (`stream_layers`).

Leaves are host numpy arrays in the checkpoint's own dtype (bf16 via ml_dtypes): nothing that
changes singular values happens implicitly, and where the arrays go (one device, or sharded
over many) is the kernel's choice, made with one `jax.device_put` from host memory.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from spectrax.io.adapters import ADAPTERS, DEFAULT_LM_HEAD, LM_HEADS, Tensors, layer_pattern
from spectrax.io.checkpoint import CheckpointFiles, open_checkpoint
from spectrax.io.config import ModelSpec, parse_config
from spectrax.io.errors import CheckpointError, ConfigError
from spectrax.io.hub import HubShards, open_hub, parse_repo_id
from spectrax.io.gguf import GGUFTensorInfo
from spectrax.io.layout import Layout, find_layout
from spectrax.io.safetensors import TensorInfo, read_tensor

__all__ = [
    "LAYER_PARTS", "Model", "LayerBlock", "Source", "check_shapes", "open_source", "layer", "load", "load_globals", "stream_layers",
    "convert_layer", "convert_globals",
]

Tree = dict[str, Any]

# The top-level parts of a canonical layer (`spectrax.io.adapters`): what `stream_layers(parts=...)` selects.
LAYER_PARTS: tuple[str, ...] = ("attn", "mlp", "norms")


@dataclasses.dataclass(frozen=True)
class Source:
    """An opened checkpoint: its files, parsed spec and tensor layout. Holds no tensor data.

    `hub` is set for a Hub repo id: it downloads weight files as readers ask for them."""

    files: CheckpointFiles
    spec: ModelSpec
    layout: Layout
    hub: HubShards | None = None

    @property
    def path(self) -> str:
        return self.files.path

    @property
    def name(self) -> str:
        """The repo id for a Hub checkpoint, else the folder's name."""
        return self.hub.repo_id if self.hub is not None else os.path.basename(os.path.normpath(self.path))

    def local(self, named: Mapping[str, TensorInfo]) -> Mapping[str, TensorInfo]:
        """`named` with every tensor's file on local disk (a Hub checkpoint downloads them now)."""
        return named if self.hub is None else self.hub.local(named)

    def layer_groups(self) -> list[tuple[int, ...]]:
        """Layer indices grouped by identical stored shapes, in order of first appearance."""
        groups: dict[tuple, list[int]] = {}
        for i in range(self.spec.num_layers):
            groups.setdefault(self.layout.layer_signature(i), []).append(i)
        return [tuple(g) for g in groups.values()]

    def source_dtypes(self) -> list[str]:
        return sorted({info.dtype for layer in self.layout.layers for info in layer.values()})


@dataclasses.dataclass(frozen=True)
class LayerBlock:
    """Consecutive same-shaped layers `layer_ids`, each leaf of `params` stacked `(len(layer_ids), ...)`."""

    layer_ids: tuple[int, ...]
    params: Tree


@dataclasses.dataclass(frozen=True)
class Model:
    """A converted checkpoint.

    Attributes:
      spec: the parsed `ModelSpec`.
      params: `{"embed": ..., "layers": (group, ...), "final_norm": ..., "lm_head": ...}`; each group
        is `{"layer_ids": (n,) int32, "attn": ..., "mlp": ..., "norms": ...}` with leaves stacked
        `(n, ...)` over its layers (one group when all layers have the same shapes). So
        `params["layers"][0]` is the first *group*, not layer 0: `model.layer(i)` (or
        `spectrax.io.layer(params, i)`) is layer `i` alone. A tied `lm_head["weight"]` is the very
        array of `embed["tokens"]`.
      meta: architecture, source path and dtypes, tied/aliased tensors, transformations applied,
        tensors deliberately not converted.

    A `Model` is a registered pytree whose leaves are the weights (`params` without the integer
    `layer_ids`, and a tied head once): `jax.tree.map(lambda a: a.astype(jnp.float32), model)` is a
    float32 `Model`, and `jax.jit`/`jax.grad` take it as an argument; `spec`, `meta` and the
    `layer_ids` are static.
    """

    spec: ModelSpec
    params: Tree
    meta: dict[str, Any]

    def layer(self, index: int) -> Tree:
        """Layer `index` alone, leaves without the stacking axis; see `spectrax.io.layer`."""
        return layer(self.params, index)


@dataclasses.dataclass(frozen=True, eq=False)
class _ModelStructure:
    """What a `Model` pytree keeps out of its leaves: the spec, the metadata, each group's
    `layer_ids` (None for a group without them) and whether the head is tied (`lm_head["weight"]`
    is `embed["tokens"]`: one leaf, restored as one array). Equal only when the spec's config is
    equal too (`ModelSpec` equality leaves `config` out, but the forward pass reads it), so
    `jax.jit` never reuses a program traced for another config."""

    spec: ModelSpec
    meta: dict[str, Any]
    layer_ids: tuple[tuple[int, ...] | None, ...]
    tied: bool

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, _ModelStructure)
                and (self.spec, self.layer_ids, self.tied) == (other.spec, other.layer_ids, other.tied)
                and dict(self.spec.config) == dict(other.spec.config) and self.meta == other.meta)

    def __hash__(self) -> int:
        return hash((self.spec, self.layer_ids, self.tied))


def _flatten_model(model: Model):
    ids = tuple(None if "layer_ids" not in g else tuple(int(i) for i in np.asarray(g["layer_ids"]))
                for g in model.params["layers"])
    weights = {**model.params, "layers": tuple({k: v for k, v in g.items() if k != "layer_ids"}
                                               for g in model.params["layers"])}
    head = model.params.get("lm_head", {})
    tied = head.get("weight") is not None and head.get("weight") is model.params.get("embed", {}).get("tokens")
    if tied:
        weights["lm_head"] = {k: v for k, v in head.items() if k != "weight"}
    structure = _ModelStructure(model.spec, model.meta, ids, tied)
    return ((jax.tree_util.GetAttrKey("params"), weights),), structure


def _unflatten_model(structure: _ModelStructure, children) -> Model:
    (weights,) = children
    groups = tuple(g if ids is None else {"layer_ids": np.asarray(ids, np.int32), **g}
                   for g, ids in zip(weights["layers"], structure.layer_ids))
    params = {**weights, "layers": groups}
    if structure.tied:
        params["lm_head"] = {**weights["lm_head"], "weight": weights["embed"]["tokens"]}
    return Model(structure.spec, params, structure.meta)


# A Model is a pytree whose leaves are its weights: `jax.tree.map(lambda a: a.astype(jnp.float32), model)`,
# `jax.device_put(model)`, `jax.jit(f)(model)` and `jax.grad` see the float tensors; the spec, the
# metadata and the integer `layer_ids` (which fix the order of the layers) are static structure, and
# a tied head is one leaf (its gradient sums both uses; a map keeps it tied).
jax.tree_util.register_pytree_with_keys(Model, _flatten_model, _unflatten_model)


def layer(params: Tree, index: int) -> Tree:
    """Layer `index` of a canonical tree, its leaves without the group's stacking axis.

    `params["layers"]` stacks layers with the same stored tensors, shapes and dtypes into groups
    (`layer_ids (n,)`, leaves `(n, ...)`), and a group's layers need not be consecutive (layers 0
    and 2 in one group, layer 1 with an extra bias in another), so layer `i` is the slot of `i` in
    the group whose `layer_ids` hold it:

        q = sx.io.layer(model.params, 3)["attn"]["q"]     # (H, D, E), layer 3's query heads

    Args:
      params: `Model.params` (or any tree with its `"layers"` groups; numpy or jax leaves).
      index: layer number, `0 <= index < num_layers`; negative counts from the end, as for a list.

    Returns:
      `{"attn": ..., "mlp": ..., "norms": ...}` with every leaf indexed at the layer's slot (views of
      the stacked numpy arrays, no copy).

    Raises:
      IndexError: no such layer.
    """
    groups = params["layers"]
    num_layers = sum(len(g["layer_ids"]) for g in groups)
    i = int(index) + num_layers if int(index) < 0 else int(index)
    for group in groups:
        slots = np.flatnonzero(np.asarray(group["layer_ids"]) == i)
        if slots.size:
            rest = {k: v for k, v in group.items() if k != "layer_ids"}
            return jax.tree.map(lambda leaf: leaf[int(slots[0])], rest)
    raise IndexError(f"layer {index} out of range for a {num_layers}-layer model (layers 0 to {num_layers - 1})")


def open_source(
    path: str | os.PathLike, *, strict: bool = True, tower: str | None = None, disk_budget: int | str | None = None
) -> Source:
    """Index a checkpoint (headers and config only) and check its layout against its config.

    `path` is a local checkpoint or, when no such path exists, a Hugging Face Hub repo id
    `ORG/NAME[@REVISION]` (`spectrax.io.hub`): its weight files are downloaded when first read.
    `disk_budget` (bytes, or text like `"20GB"`) bounds the disk a Hub checkpoint's downloads take:
    files are deleted once no planned read needs them. A local checkpoint ignores it.
    """
    repo = parse_repo_id(path)
    if repo is None:
        files, hub = open_checkpoint(path), None
    else:
        files, hub = open_hub(os.fspath(path), *repo, disk_budget=disk_budget)
    spec = parse_config(files.config, source=files.config_source, strict=strict)
    layout = find_layout(files.tensors, layer_pattern(spec.model_type), spec.num_layers, tower=tower)
    source = Source(files, spec, layout, hub)
    check_shapes(source)
    return source


def check_shapes(source: Source) -> None:
    """Convert shapes and dtypes only (`jax.eval_shape` over the headers, no tensor data), once per
    distinct layer signature and for the globals, so a tensor the config does not imply or a
    non-float weight is refused before anything is read or any analysis starts."""

    prefix = f"{source.layout.root}{layer_pattern(source.spec.model_type)}."
    checks = [(f"layer {group[0]}", source.layout.layers[group[0]],
               functools.partial(convert_layer, spec=source.spec, layer=group[0]), f"{prefix}{group[0]}.")
              for group in source.layer_groups()]
    checks.append(("the embeddings and output head", source.layout.globals,
                   lambda t, where: convert_globals(t, source.spec, where=where)[0], source.layout.root))
    for what, named, convert, names in checks:
        tree = jax.eval_shape(lambda t: convert(t, where=_describe(named, names)), _abstract(named))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise CheckpointError(f"{source.path}: {what}: {jax.tree_util.keystr(path)} is stored as {leaf.dtype}; "
                                      "spectrax analyzes floating-point weights only")


def convert_layer(tensors: Mapping[str, np.ndarray], spec: ModelSpec, layer: int, *, where: Callable[[str], str] = str) -> Tree:
    """Pure conversion of one layer's tensors (relative names) to the canonical layer tree.

    `where(name)` describes a tensor for error messages (its full name and file).

    Raises `CheckpointError` for a missing tensor, a shape the config does not imply, or a stored
    tensor the adapter did not consume (nothing is dropped silently).
    """
    t = Tensors(tensors, where)
    tree = ADAPTERS[spec.model_type][0](t, spec, layer)
    unused = t.unused()
    if unused:
        raise CheckpointError(
            f"layer {layer} of this {spec.model_type} checkpoint holds tensors spectrax does not know: "
            f"{', '.join(where(n) for n in unused)}; refusing to drop them silently"
        )
    return tree


def convert_globals(
    tensors: Mapping[str, np.ndarray], spec: ModelSpec, *, where: Callable[[str], str] = str
) -> tuple[Tree, list[str], list[str]]:
    """Pure conversion of the non-layer tensors.

    Returns the tree, the transformations applied, and the names of tensors not converted
    (other towers' pieces, projectors: listed in the metadata, never read).

    A missing output head is aliased to the token embedding (tied embeddings); if the config says
    the head is not tied, that is an error.
    """
    t = Tensors(tensors, where)
    tree = ADAPTERS[spec.model_type][1](t, spec)
    head: Tree = {}
    for name, key in LM_HEADS.get(spec.model_type, DEFAULT_LM_HEAD):
        if name in t:
            head[key] = t.get(name)
    notes = []
    if "weight" not in head:
        if not spec.tie_word_embeddings:
            raise ConfigError(
                f"config.json says tie_word_embeddings=false but the checkpoint has no output head "
                f"({LM_HEADS.get(spec.model_type, DEFAULT_LM_HEAD)[0][0]})"
            )
        head["weight"] = tree["embed"]["tokens"]
        notes.append("lm_head.weight aliased to embed.tokens (tied embeddings)")
    elif head["weight"].shape != tree["embed"]["tokens"].shape and spec.model_type != "opt":
        raise CheckpointError(
            f"output head has shape {head['weight'].shape} but the token embedding is {tree['embed']['tokens'].shape}"
        )
    tree["lm_head"] = head
    return tree, notes, t.unused()


class _Lazy(Mapping):
    """Tensors by relative name, each read from disk only when an adapter asks for it; a name in
    `unread` gives a zero-strided stand-in of its shape and dtype instead (no bytes read or held)."""

    def __init__(self, named: Mapping[str, TensorInfo], unread: frozenset[str] = frozenset()):
        self._named = named
        self._unread = unread

    def __getitem__(self, name: str) -> np.ndarray:
        info = self._named[name]
        if name in self._unread:
            return np.broadcast_to(np.zeros((), info.numpy_dtype()), tuple(info.shape))
        return info.read() if isinstance(info, GGUFTensorInfo) else read_tensor(info)

    def __contains__(self, name: object) -> bool:
        # Mapping's default tries __getitem__, i.e. reads the tensor just to test for its name
        return name in self._named

    def __iter__(self):
        return iter(self._named)

    def __len__(self) -> int:
        return len(self._named)


def _abstract(named: Mapping[str, TensorInfo]) -> dict[str, jax.ShapeDtypeStruct]:
    return {name: jax.ShapeDtypeStruct(tuple(info.shape), info.numpy_dtype()) for name, info in named.items()}


def _feeding(source: Source, layer: int, parts: Collection[str]) -> frozenset[str]:
    """The stored tensors (relative names) of `layer` that the canonical `parts` are made from.

    Traced, not listed per family: the adapter runs once on shapes (`jax.make_jaxpr`), and each
    output leaf's inputs are followed back through the program, so a fused tensor (`qkv_proj`,
    `gate_up_proj`) counts for every part it feeds, whatever the family calls it."""
    abstract = _abstract(source.layout.layers[layer])
    closed, shape = jax.make_jaxpr(lambda t: convert_layer(t, source.spec, layer), return_shape=True)(abstract)
    jaxpr = closed.jaxpr
    inputs = jax.tree_util.tree_leaves_with_path(abstract)
    depends = {var: {path[0].key} for var, (path, _) in zip(jaxpr.invars, inputs)}
    for eqn in jaxpr.eqns:
        feeds = set().union(*(depends.get(v, set()) for v in eqn.invars if isinstance(v, jax.extend.core.Var)))
        depends.update((out, feeds) for out in eqn.outvars)
    outputs = jax.tree_util.tree_leaves_with_path(shape)
    return frozenset().union(*(depends.get(var, set()) for var, (path, _) in zip(jaxpr.outvars, outputs)
                               if isinstance(var, jax.extend.core.Var) and path[0].key in parts))


def _unread(source: Source, layers: Sequence[int], parts: Sequence[str]) -> dict[int, frozenset[str]]:
    """`{layer: stored tensors none of `parts` is made from}`, traced once per layer signature."""
    if set(LAYER_PARTS) <= set(parts):
        return {i: frozenset() for i in layers}
    by_signature: dict[tuple, frozenset[str]] = {}
    for i in layers:
        signature = source.layout.layer_signature(i)
        if signature not in by_signature:
            by_signature[signature] = frozenset(source.layout.layers[i]) - _feeding(source, i, parts)
    return {i: by_signature[source.layout.layer_signature(i)] for i in layers}


def _read_layer(source: Source, layer: int, unread: frozenset[str] = frozenset(),
                parts: Sequence[str] = LAYER_PARTS) -> Tree:
    """Layer `layer` converted, its tensors in `unread` never read, only the canonical `parts` kept."""
    named = source.layout.layers[layer]
    named = {**named, **source.local({n: i for n, i in named.items() if n not in unread})}
    prefix = f"{source.layout.root}{layer_pattern(source.spec.model_type)}.{layer}."
    tree = convert_layer(_Lazy(named, unread), source.spec, layer, where=_describe(named, prefix))
    return {part: tree[part] for part in tree if part in parts}


def _describe(named: Mapping[str, TensorInfo], prefix: str) -> Callable[[str], str]:
    def where(name: str) -> str:
        if name in named:
            return f"{named[name].name!r} in {named[name].file}"
        return f"{prefix + name!r} (expected in {', '.join(sorted({i.file for i in named.values()}))})"

    return where


def load_globals(source: Source) -> tuple[Tree, list[str], list[str]]:
    """Read and convert the non-layer tensors (embeddings, final norm, output head); see `convert_globals`."""
    named = source.local(source.layout.globals)
    return convert_globals(_Lazy(named), source.spec, where=_describe(named, source.layout.root))


def stream_layers(
    source: Source | str | os.PathLike,
    *,
    layers: Sequence[int] | None = None,
    block_size: int = 1,
    strict: bool = True,
    tower: str | None = None,
    disk_budget: int | str | None = None,
    parts: Collection[str] = LAYER_PARTS,
) -> Iterator[LayerBlock]:
    """Yield the checkpoint's layers one block at a time, reading only that block's tensors.

    Args:
      source: a checkpoint path, a Hub repo id, or an opened `Source`.
      layers: which layer indices to read (default all), in increasing order.
      block_size: up to this many consecutive, same-shaped layers are stacked in one block.
      disk_budget: for a Hub repo id, the most disk its downloaded files take at once (see `open_source`).
      strict: as in `load`.
      tower: as in `load`.
      parts: the canonical layer parts to yield (`LAYER_PARTS`: `attn`, `mlp`, `norms`; default
        all). Only the stored tensors these parts are made from are read (and, for a Hub repo,
        downloaded): `parts=["attn"]` never reads an MLP tensor. Which tensors feed which part is
        found by tracing the family's adapter on shapes, so a fused tensor is read when any part
        it feeds is asked for.

    Yields:
      `LayerBlock`s whose leaves are `(n, ...)` numpy arrays, holding `parts` only. Memory held
      at once is one block's weights; the caller drops a block before asking for the next.

    Raises:
      ValueError: a layer out of range, or a part not in `LAYER_PARTS`.

    Examples:
        >>> import spectrax as sx
        >>> for block in sx.stream_layers(sx.data.TINY_LLAMA, layers=[1, 2], block_size=2):
        ...     print(block.layer_ids, block.params["attn"]["q"].shape, block.params["mlp"]["down"].shape)
        (1, 2) (2, 4, 16, 64) (2, 64, 128)
    """
    if not isinstance(source, Source):
        source = open_source(source, strict=strict, tower=tower, disk_budget=disk_budget)
    wanted = sorted(set(range(source.spec.num_layers) if layers is None else layers))
    bad = [i for i in wanted if not 0 <= i < source.spec.num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a {source.spec.num_layers}-layer model")
    parts = tuple(parts)
    unknown = sorted(set(parts) - set(LAYER_PARTS))
    if unknown or not parts:
        raise ValueError(f"unknown layer parts {unknown or parts}; expected some of {', '.join(LAYER_PARTS)}")
    unread = _unread(source, wanted, parts)
    if source.hub is not None:
        source.hub.plan([{n: t for n, t in source.layout.layers[i].items() if n not in unread[i]} for i in wanted])
    yield from _blocks(source, wanted, block_size, lambda i: _read_layer(source, i, unread[i], parts))
    if source.hub is not None:
        source.hub.release()


def _blocks(source: Source, wanted: list[int], block_size: int, read: Callable[[int], Tree]) -> Iterator[LayerBlock]:
    pending: list[int] = []
    for i in wanted:
        if pending and (
            len(pending) == block_size
            or i != pending[-1] + 1
            or source.layout.layer_signature(i) != source.layout.layer_signature(pending[-1])
        ):
            yield _block(pending, read)
            pending = []
        pending.append(i)
    if pending:
        yield _block(pending, read)


def _block(layer_ids: list[int], read: Callable[[int], Tree]) -> LayerBlock:
    trees = [read(i) for i in layer_ids]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *trees) if len(trees) > 1 else jax.tree.map(lambda x: x[None], trees[0])
    return LayerBlock(tuple(layer_ids), stacked)


def load(
    path: str | os.PathLike, *, strict: bool = True, tower: str | None = None, device: bool = False,
    disk_budget: int | str | None = None,
) -> Model:
    """Read and convert a whole checkpoint.

    Args:
      path: a checkpoint directory (single file, or shards with `model.safetensors.index.json`),
        or a GGUF file (or a folder holding one).
      strict: refuse config options spectrax does not understand (see `parse_config`).
      tower: the root of the tower to read in a multimodal checkpoint (default: the language tower).
      device: return jax arrays on the default device instead of host numpy arrays. Each layer is
        written into its preallocated stacked array in place (a donated update), so the peak is
        the model plus one layer, and `spectrax.models.forward` then uses the weights without
        copying them (numpy leaves are copied to the device on every call).
      disk_budget: for a Hub repo id, the most disk its downloaded files take at once (see `open_source`).

    Returns:
      A `Model`; `params["layers"]` is a tuple of groups of same-shaped layers, leaves `(n, ...)`.

    Examples:
        >>> import spectrax as sx
        >>> model = sx.load(sx.data.TINY_LLAMA)    # 4-layer llama, bf16
        >>> model.spec.model_type, model.spec.num_layers, model.meta["source_dtypes"]
        ('llama', 4, ['BF16'])
        >>> (group,) = model.params["layers"]      # one group: every layer has the same shapes
        >>> group["layer_ids"], group["attn"]["q"].shape    # (layers, H, D, E)
        (array([0, 1, 2, 3], dtype=int32), (4, 4, 16, 64))
        >>> model.layer(2)["attn"]["k"].shape       # (KV, D, E): layer 2 alone
        (2, 16, 64)
    """
    source = open_source(path, strict=strict, tower=tower, disk_budget=disk_budget)
    if source.hub is not None:
        source.hub.plan([source.layout.globals, *(source.layout.layers[i] for g in source.layer_groups() for i in g)])
    tree, notes, unconverted = load_globals(source)
    if device:
        tree = jax.tree.map(jax.device_put, tree)
    empty = (lambda n, x: jnp.zeros((n, *x.shape), x.dtype)) if device else (lambda n, x: np.empty((n, *x.shape), x.dtype))
    groups = []
    for layer_ids in source.layer_groups():
        # Preallocate the group's stacked arrays so peak memory is the model plus one layer.
        stacked = None
        for slot, i in enumerate(layer_ids):
            layer = _read_layer(source, i)
            if stacked is None:
                stacked = jax.tree.map(functools.partial(empty, len(layer_ids)), layer)
            if device:
                stacked = jax.tree.map(lambda dst, src: _set_slot(dst, src, slot), stacked, layer)
            else:
                jax.tree.map(lambda dst, src: dst.__setitem__(slot, src), stacked, layer)
            del layer
        groups.append({"layer_ids": np.asarray(layer_ids, np.int32), **stacked})
    tree["layers"] = tuple(groups)
    if source.hub is not None:
        source.hub.release()
    return Model(source.spec, tree, _meta(source, notes, unconverted))


@functools.partial(jax.jit, donate_argnums=0)
def _set_slot(stacked: jax.Array, layer: jax.Array, slot: int) -> jax.Array:
    return jax.lax.dynamic_update_index_in_dim(stacked, layer.astype(stacked.dtype), slot, 0)


def _meta(source: Source, notes: list[str], unconverted: list[str]) -> dict[str, Any]:
    return {
        "source": source.path,
        "hub": source.hub.describe() if source.hub is not None else None,
        "model_type": source.spec.model_type,
        "wrapper": source.spec.wrapper,
        "tower": source.layout.root,
        "other_towers": list(source.layout.other_towers),
        "source_dtypes": source.source_dtypes(),
        "layer_groups": [list(g) for g in source.layer_groups()],
        "transformations": notes,
        "not_converted": unconverted,
        "ignored_config_keys": list(source.spec.ignored_keys),
        "unknown_config_keys": list(source.spec.unknown_keys),
    }
