"""The 2-D weight matrices that per-matrix analyses (rank, esd) visit, and their row tables."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from spectrax.io.load import Source, load_globals

__all__ = ["float_matrix", "layer_matrices", "global_matrices", "matrix_columns", "matrix_storage", "skipped_matrices",
           "skipped_table"]

# Canonical matrix -> the stored tensors it may come from (separate or fused projections).
_STORED_AS = {
    "attn.q": ("self_attn.q_proj.weight", "self_attn.qkv_proj.weight"),
    "attn.k": ("self_attn.k_proj.weight", "self_attn.qkv_proj.weight"),
    "attn.v": ("self_attn.v_proj.weight", "self_attn.qkv_proj.weight"),
    "attn.o": ("self_attn.o_proj.weight",),
    "mlp.gate": ("mlp.gate_proj.weight", "mlp.gate_up_proj.weight"),
    "mlp.up": ("mlp.up_proj.weight", "mlp.gate_up_proj.weight"),
    "mlp.down": ("mlp.down_proj.weight",),
    "embed.tokens": ("embed_tokens.weight",),
    "lm_head": ("lm_head.weight",),
}

# Stored names of fused projections, which the adapters split into canonical parts.
_FUSED = ("qkv_proj.", "query_key_value.", "c_attn.", "gate_up_proj.", "in_proj_weight")


def float_matrix(name: str, w: npt.ArrayLike) -> np.ndarray:
    """`w` as a float32/float64 numpy matrix; narrower floats (bf16, f16, fp8) upcast to f32 (exactly).

    The per-matrix analyses check their input with it (`spectra.whole_spectra`) and upcast with it
    what they decompose outside the shared spectra (`esd`'s shuffled baselines).
    """
    w = np.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"matrix {name!r} must be a real floating array, got {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"matrix {name!r} must be 2-D, got shape {w.shape}")
    return w if w.dtype in (np.float32, np.float64) else w.astype(np.float32)


def layer_matrices(params: dict) -> Iterator[tuple[str, np.ndarray]]:
    """The whole 2-D weights of one unstacked canonical layer, named `attn.q`, ..., `mlp.<part>`.

    Attention projections come as `(heads * D, E)`; `attn.o` is W_O^T (the same singular values).
    """
    attn = params.get("attn", {})  # a part no chosen analysis reads is not streamed
    for part in ("q", "k", "v", "o") if attn else ():
        w = np.asarray(attn[part])
        yield f"attn.{part}", w.reshape(-1, w.shape[-1])
    for part, w in params.get("mlp", {}).items():
        if not part.endswith("_bias"):
            yield f"mlp.{part}", np.asarray(w)


def global_matrices(source: Source) -> dict[str, np.ndarray]:
    """Every 2-D weight outside the layers, named by its place in the canonical tree: `embed.tokens`,
    `embed.positions`, `embed.token_types`, `pooler`, `lm_head.transform`, ..., and `lm_head` when it
    is stored separately (a tied head is the same matrix as `embed.tokens`; `skipped_matrices` says so)."""
    tree, _, _ = load_globals(source)
    matrices = {}
    for group in ("embed", "pooler", "lm_head"):
        for key, w in tree.get(group, {}).items():
            if getattr(w, "ndim", 0) == 2 and not (group == "lm_head" and w is tree["embed"]["tokens"]):
                matrices[group if key == "weight" else f"{group}.{key}"] = w
    return matrices


def skipped_matrices(source: Source, layer: int | None, analyzed: Mapping[str, np.ndarray]) -> dict[str, str]:
    """`{stored tensor name: reason}` for the stored weights of a layer (`layer=None`: outside the
    layers) that `analyzed` (`{matrix: (m, n)}`, what `layer_matrices` / `global_matrices` gave)
    does not hold as a whole matrix, so that every weight is either analyzed or listed.

    A stored 2-D tensor counts as analyzed when an analyzed matrix has its shape (either way round:
    `attn.o` is W_O^T; a global matrix is one `global_matrices` converted). Fused projections
    (`qkv_proj`, `c_attn`, `gate_up_proj`) are analyzed as their parts; tensors of more than two
    axes (convolutions), projectors and other towers' tensors are not.
    """
    named = source.layout.globals if layer is None else source.layout.layers[layer]
    shapes = [tuple(w.shape) for w in analyzed.values()]
    skipped: dict[str, str] = {}
    if layer is None and "embed.tokens" in analyzed and "lm_head" not in analyzed:
        skipped["lm_head.weight"] = "tied: the same matrix as embed.tokens"
    candidates = []
    for relative, info in sorted(named.items()):
        if len(info.shape) < 2:
            continue
        if len(info.shape) > 2:
            skipped[info.name] = f"{len(info.shape)}-D, not a matrix"
        elif any(part in relative for part in _FUSED):
            skipped[info.name] = "fused projection, analyzed as its parts"
        else:
            candidates.append(info)
    for transposed in (False, True):                     # same shape first, so W and W^T pair up last
        for info in list(candidates):
            shape = tuple(info.shape[::-1] if transposed else info.shape)
            if shape in shapes:
                shapes.remove(shape)
                candidates.remove(info)
    skipped.update({info.name: "not converted (another tower's or a projector's tensor)" if layer is None
                    else "not among the analyzed matrices" for info in candidates})
    if layer is None:
        skipped.update({f"{root}*": "another tower, not analyzed" for root in source.layout.other_towers})
    return skipped


def skipped_table(source: Source, matrices: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`skipped_matrices` of every layer in a run's per-matrix table (`layer`, `matrix`, `rows`,
    `cols`; layer -1 the weights outside the layers) as the rows of `skipped.csv`: `matrix` (the
    stored tensor's name), `shape` ("m x n", empty for a whole other tower) and `reason`.

    The table's shapes are what was analyzed, so a run cropped to top-left blocks (`crop`) would list
    every matrix; call it for whole matrices."""
    layers = np.asarray(matrices["layer"])
    rows = []
    for layer in dict.fromkeys(layers.tolist()):
        at = layers == layer
        analyzed = {str(m): np.broadcast_to(np.float32(0), (int(r), int(c)))  # shapes only, no memory
                    for m, r, c in zip(np.asarray(matrices["matrix"])[at], np.asarray(matrices["rows"])[at],
                                       np.asarray(matrices["cols"])[at])}
        slot = None if layer < 0 else int(layer)
        named = source.layout.globals if slot is None else source.layout.layers[slot]
        shapes = {info.name: " x ".join(str(n) for n in info.shape) for info in named.values()}
        rows += [(name, shapes.get(name, ""), reason) for name, reason in skipped_matrices(source, slot, analyzed).items()]
    return {column: np.array([row[i] for row in rows], dtype=object) for i, column in enumerate(("matrix", "shape", "reason"))}


def matrix_storage(source: Source, layer: int | None) -> dict[str, str]:
    """`{matrix: storage type}` of a layer's matrices (`layer=None`: the embedding and output head),
    e.g. `"BF16"`, or a ggml type such as `"Q4_K"` for GGUF files. A matrix whose tensor name is not
    one of the llama-style names takes the layer's dtype when all its tensors share one."""
    named = source.layout.globals if layer is None else source.layout.layers[layer]
    dtypes = {info.dtype for info in named.values()}
    fallback = dtypes.pop() if len(dtypes) == 1 else ""
    return {matrix: next((named[n].dtype for n in names if n in named), fallback) for matrix, names in _STORED_AS.items()}


def matrix_columns(
    rows: Mapping[str, Mapping[str, np.ndarray]], shapes: Mapping[str, tuple[int, int]]
) -> dict[str, np.ndarray]:
    """`{matrix: {column: scalar}}` -> a table with `matrix`, `rows`, `cols` and each column,
    in the order of `shapes`."""
    names = list(shapes)
    columns = list(rows[names[0]])
    return {
        "matrix": np.array(names, dtype=object),
        "rows": np.array([shapes[n][0] for n in names]),
        "cols": np.array([shapes[n][1] for n in names]),
        **{c: np.array([rows[n][c] for n in names]) for c in columns},
    }
