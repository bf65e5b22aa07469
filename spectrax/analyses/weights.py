"""The 2-D weight matrices that per-matrix analyses (rank, esd) visit, and their row tables."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from spectrax.io.load import Source, load_globals

__all__ = ["layer_matrices", "global_matrices", "matrix_columns"]


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
