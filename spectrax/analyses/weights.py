"""The 2-D weight matrices that per-matrix analyses (rank, esd) visit, and their row tables."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from spectrax.io.load import Source, load_globals

__all__ = ["layer_matrices", "global_matrices", "matrix_columns", "matrix_storage"]

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


def layer_matrices(params: dict) -> Iterator[tuple[str, np.ndarray]]:
    """The whole 2-D weights of one unstacked canonical layer, named `attn.q`, ..., `mlp.<part>`.

    Attention projections come as `(heads * D, E)`; `attn.o` is W_O^T (the same singular values).
    """
    attn = params["attn"]
    for part in ("q", "k", "v", "o"):
        w = np.asarray(attn[part])
        yield f"attn.{part}", w.reshape(-1, w.shape[-1])
    for part, w in params["mlp"].items():
        if not part.endswith("_bias"):
            yield f"mlp.{part}", np.asarray(w)


def global_matrices(source: Source) -> dict[str, np.ndarray]:
    """The token embedding and, when it is stored separately (not tied), the output head."""
    tree, _, _ = load_globals(source)
    matrices = {"embed.tokens": tree["embed"]["tokens"]}
    if tree["lm_head"]["weight"] is not tree["embed"]["tokens"]:
        matrices["lm_head"] = tree["lm_head"]["weight"]
    return matrices


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
