"""Per-head Q/K/V spectral statistics (SPEC.md §1), each beside its random-matrix null.

For every (layer, query head h) with its key/value head g = h // (H // KV):

- pair statistics of (W_Q,h, W_K,g) `_qk`, (W_Q,h, W_V,g) `_qv` and (W_K,g, W_V,g) `_kv`:
  pearson, ssr, alpha, alpha_mse (Monte Carlo null over shape- and scale-matched Gaussian
  matrices), cos_u, cos_v, grassmann (exact nulls);
- single-matrix statistics of W_Q,h `_q`, W_K,g `_k`, W_V,g `_v`: sigma_max, cond, erank,
  stable_rank, max_mean (Monte Carlo null).

Each statistic X comes with `X_null_mean`, `X_null_std`, `X_z` (and `X_pct` for Monte Carlo
nulls). Heads holding NaN/Inf weights get NaN statistics and `finite = 0`; the run goes on.
The checkpoint is streamed one layer at a time, so memory does not grow with depth.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import numpy as np
from tqdm.auto import tqdm

from spectrax import spectral as sp
from spectrax.io.load import Source, open_source, stream_layers

__all__ = ["head_laws", "laws_table", "PAIRS", "MATRICES"]

PAIRS = ("qk", "qv", "kv")
MATRICES = ("q", "k", "v")
_SPECTRUM = ("sigma_max", "cond", "erank", "stable_rank", "max_mean")


def _spectrum(w):
    stats = sp.spectrum_statistics(w)
    return {name: stats[name] for name in _SPECTRUM}


def _with_null(key, stat_fn, *arrays, num_draws: int, exact: dict | None = None) -> dict[str, np.ndarray]:
    observed = stat_fn(*arrays)
    nulls = sp.split_null(sp.gaussian_null(key, stat_fn, *arrays, num_draws=num_draws))
    nulls.update(exact or {})
    return {k: np.asarray(v) for k, v in sp.null_columns(observed, nulls).items()}


def head_laws(attn: dict, key: jax.Array, *, num_draws: int = 16) -> dict[str, np.ndarray]:
    """Statistics for a block of layers.

    Args:
      attn: canonical attention of the block: `q (n, H, D, E)`, `k`, `v (n, KV, D, E)`.
      key: PRNG key for the Monte Carlo nulls.
      num_draws: Gaussian draws per null.
    Returns:
      `{column: (n, H)}` with every statistic, its null columns and `finite`.
    """
    q, k, v = (np.asarray(attn[m]) for m in MATRICES)
    n, H, D, E = q.shape
    KV = k.shape[1]
    kv_of = sp.kv_head_index(H, KV)
    exact = sp.exact_pair_nulls((D, E))
    keys = jax.random.split(key, 6)
    cols: dict[str, np.ndarray] = {}
    for (name, a, b), k_ in zip((("qk", q, k), ("qv", q, v)), keys[:2]):
        stats = _with_null(k_, sp.gqa_pair_statistics, a, b, num_draws=num_draws, exact=exact)
        cols.update({_name(stat, name): val for stat, val in stats.items()})
    kv_cols = _with_null(keys[2], sp.pair_statistics, k, v, num_draws=num_draws, exact=exact)
    cols.update({_name(stat, "kv"): val[:, kv_of] for stat, val in kv_cols.items()})
    for (m, w), k_ in zip((("q", q), ("k", k), ("v", v)), keys[3:]):
        stats = _with_null(k_, _spectrum, w, num_draws=num_draws)
        cols.update({_name(stat, m): val if m == "q" else val[:, kv_of] for stat, val in stats.items()})
    finite = {m: np.isfinite(x.astype(np.float32)).all(axis=(-2, -1)) for m, x in (("q", q), ("k", k), ("v", v))}
    cols["finite"] = (finite["q"] & finite["k"][:, kv_of] & finite["v"][:, kv_of]).astype(np.int64)
    return cols


_SUFFIXES = ("_null_mean", "_null_std", "_z", "_pct")


def _name(column: str, tag: str) -> str:
    """`pearson_null_mean` + `qk` -> `pearson_qk_null_mean`: the tag goes after the statistic."""
    for suffix in _SUFFIXES:
        if column.endswith(suffix):
            return f"{column[: -len(suffix)]}_{tag}{suffix}"
    return f"{column}_{tag}"


def laws_table(
    source: Source | str,
    *,
    layers: Iterable[int] | None = None,
    num_draws: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """The per-head table for a checkpoint: one row per (layer, query head).

    Columns: `layer`, `head`, `kv_head`, then every statistic of `head_laws`.
    """
    if not isinstance(source, Source):
        source = open_source(source)
    spec = source.spec
    chosen = list(range(spec.num_layers)) if layers is None else sorted(set(layers))
    key = jax.random.key(seed)
    rows: list[dict[str, np.ndarray]] = []
    bar = tqdm(total=len(chosen), desc="laws", unit="layer", disable=not progress)
    for block in stream_layers(source, layers=chosen):
        (layer,) = block.layer_ids
        cols = head_laws(block.params["attn"], jax.random.fold_in(key, layer), num_draws=num_draws)
        H = cols["finite"].shape[1]
        rows.append({
            "layer": np.full(H, layer), "head": np.arange(H), "kv_head": sp.kv_head_index(H, spec.num_kv_heads),
            **{name: value[0] for name, value in cols.items()},
        })
        bar.update(1)
    bar.close()
    return {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
