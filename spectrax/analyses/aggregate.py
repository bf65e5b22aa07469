"""The source documents' aggregations over a per-head table, so their tables can be recomputed.

docs/statistics.md §1: the per-layer value is the mean over the layer's heads; the model value is the median
and the mean over layers; the "pseudo-bulk" is the median over the query heads of each
(layer, KV head) group, then the median across those groups; layer groups (by default four equal
blocks of consecutive layers) report group means, and two checkpoints are compared by the
relative change `(base - other) / base`.

Tables are column dicts `{name: (rows,)}` with a `layer` column (and `kv_head` for the
pseudo-bulk). NaN entries (heads with non-finite weights) are left out of every mean and median.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from spectrax.analyses.tables import json_value
from spectrax.spectral.nulls import effect_sizes, monte_carlo_error, null_z, resolved

__all__ = ["NUM_GROUPS", "by_kind", "finite_mean", "layer_means", "layer_table", "pseudo_bulk", "layer_groups",
           "group_means", "relative_change", "relative_std_error", "model_values", "shown_z"]

NUM_GROUPS = 4  # layer groups of the source's tables


def finite_mean(x: npt.ArrayLike) -> float:
    """Mean over the finite entries (NaN and ±inf left out); NaN (and no warning) when there are none."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if x.size else float("nan")


def shown_z(values: Mapping[str, object], key: str = "z", flag: str = "resolved") -> object:
    """`values[key]`, a z-score, as a report may print it: None (read "n/a") unless `values[flag]`
    says the null behind it is resolved (`spectral.resolved`); a missing flag is an exact null,
    which always is. Every report section that prints a z goes through this, so none prints a z
    resting on a null whose own std is not known to within `spectral.RESOLVED_BOUND`."""
    return values.get(key) if values.get(flag, True) else None


def _nan_reduce(fn, x: np.ndarray) -> float:
    x = np.asarray(x, float)
    x = x[~np.isnan(x)]
    return float(fn(x)) if x.size else float("nan")


def layer_means(table: dict[str, np.ndarray], stats: Sequence[str]) -> dict[str, np.ndarray]:
    """`(layers,)` columns: the mean over each layer's heads of each stat and of its null mean, the
    null std *of that mean* with its Monte Carlo error (`_null_std_se`, 0 for an exact null), the
    Monte Carlo error of the null mean (`_null_mean_se`, 0 for an exact null), its z (`spectral.null_z`,
    which counts that error) and effect sizes `_diff`, `_ratio` (when the table has them).

    The null std of a layer mean is the table's `<stat>_layer_null_std` (the analysis's estimate,
    counting heads that share a K/V head), else the heads' null std over sqrt(heads) (independent
    heads). The mean of the per-head null stds would be sqrt(heads) too wide. The error of the null
    mean is the table's `<stat>_layer_null_mean_se`, else, likewise, the heads' `_null_mean_se` over
    sqrt(heads) (independent heads, each null mean from its own draws; analyses whose heads share a
    pooled null, `laws` and `kernel`, give the layer column).
    """
    layers = np.asarray(table["layer"])
    ids = np.unique(layers)
    out = {"layer": ids}

    def means(column: str) -> np.ndarray:
        values = np.asarray(table[column], float)
        return np.array([_nan_reduce(np.mean, values[layers == i]) for i in ids])

    for stat in stats:
        for column in (stat, stat + "_null_mean"):
            if column in table:
                out[column] = means(column)
        if stat + "_layer_null_std" in table:
            out[stat + "_null_std"] = means(stat + "_layer_null_std")
            se = stat + "_layer_null_std_se"
            out[stat + "_null_std_se"] = means(se) if se in table else np.zeros(len(ids))
        elif stat + "_null_std" in table:
            counted = ~np.isnan(np.asarray(table[stat], float))
            root = np.sqrt([max(np.sum(counted & (layers == i)), 1) for i in ids])
            out[stat + "_null_std"] = means(stat + "_null_std") / root
            se = stat + "_null_std_se"
            out[stat + "_null_std_se"] = means(se) / root if se in table else np.zeros(len(ids))
        if stat + "_layer_null_mean_se" in table:
            out[stat + "_null_mean_se"] = means(stat + "_layer_null_mean_se")
        elif stat + "_null_mean_se" in table:  # independent heads, each null mean from its own draws
            counted = ~np.isnan(np.asarray(table[stat], float))
            root = np.sqrt([max(np.sum(counted & (layers == i)), 1) for i in ids])
            out[stat + "_null_mean_se"] = means(stat + "_null_mean_se") / root
        if stat + "_null_std" in out and stat in out:
            _add_z(out, stat)
    return out


def _add_z(out: dict[str, np.ndarray], stat: str) -> None:
    """`<stat>_z` (counting the Monte Carlo error of the null mean, `_null_mean_se`, where there is
    one), `<stat>_diff`, `<stat>_ratio` of aggregated columns, in place."""
    out[stat + "_z"] = null_z(out[stat], out[stat + "_null_mean"], out[stat + "_null_std"], out.get(stat + "_null_mean_se"))
    out[stat + "_diff"], out[stat + "_ratio"] = effect_sizes(out[stat], out[stat + "_null_mean"])


def relative_std_error(means: npt.ArrayLike) -> np.ndarray:
    """Monte Carlo error of a layer mean's null std relative to it, from `means (num_draws, ...)`,
    the draws of the mean itself (each draw's mean over the layer's heads, whose std is the one
    `spectral.mean_null_std` estimates)."""
    std_se = monte_carlo_error(means)[1]
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer without two finite draws stays NaN
        return std_se / np.nanstd(np.asarray(means, np.float64), axis=0, ddof=1)


def _mean_std(stds, errors=None) -> tuple[float, float]:
    """Null std of a mean over independent layers (or groups), `sqrt(sum std_l^2) / L` from each one's
    null std, and its Monte Carlo error from theirs (`errors`, none: 0), propagated to first order."""
    stds = np.asarray(stds, float)
    errors = np.zeros_like(stds) if errors is None else np.asarray(errors, float)
    kept = ~np.isnan(stds)
    stds, errors = stds[kept], errors[kept]
    if not stds.size:
        return float("nan"), float("nan")
    total = np.sqrt(np.sum(stds**2))
    se = np.sqrt(np.sum((stds * errors) ** 2)) / total if total > 0 else 0.0
    return float(total / stds.size), float(se / stds.size)


def _mean_error(errors) -> float:
    """Monte Carlo error of a mean over independent layers' null means, `sqrt(sum se_l^2) / L`."""
    errors = np.asarray(errors, float)
    errors = errors[~np.isnan(errors)]
    return float(np.sqrt(np.sum(errors**2)) / errors.size) if errors.size else float("nan")


def pseudo_bulk(table: dict[str, np.ndarray], stat: str) -> tuple[np.ndarray, float]:
    """Median over query heads within each (layer, KV head), then the median across groups.

    Returns `(per_layer (layers,), model)`: the per-layer value takes the median across that
    layer's KV groups; the model value across all (layer, KV head) groups.
    """
    layers, kv = np.asarray(table["layer"]), np.asarray(table["kv_head"])
    values = np.asarray(table[stat], float)
    ids = np.unique(layers)
    group_medians = {
        (layer, g): _nan_reduce(np.median, values[(layers == layer) & (kv == g)])
        for layer in ids for g in np.unique(kv[layers == layer])
    }
    per_layer = np.array([_nan_reduce(np.median, [m for (l, _), m in group_medians.items() if l == i]) for i in ids])
    return per_layer, _nan_reduce(np.median, list(group_medians.values()))


def layer_groups(layers: Sequence[int], num_groups: int = NUM_GROUPS) -> list[tuple[int, ...]]:
    """Split the sorted layer indices into `num_groups` consecutive blocks of (near) equal size,
    the larger blocks first (48 layers -> 0-11, 12-23, 24-35, 36-47 as in the source)."""
    layers = sorted(layers)
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    return [tuple(int(i) for i in block) for block in np.array_split(layers, min(num_groups, len(layers)))]


def group_means(per_layer: dict[str, np.ndarray], stats: Sequence[str], groups: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """`(groups,)` columns: `group` ("lo-hi"), `first`, `last` and the mean over the group's layers
    of each per-layer stat (and its null columns, z and effect sizes when present)."""
    layers = np.asarray(per_layer["layer"])
    out = {
        "group": np.array([f"{g[0]}-{g[-1]}" for g in groups], dtype=object),
        "first": np.array([g[0] for g in groups]),
        "last": np.array([g[-1] for g in groups]),
    }
    for stat in stats:
        for column in (stat, stat + "_null_mean"):
            if column in per_layer:
                values = np.asarray(per_layer[column], float)
                out[column] = np.array([_nan_reduce(np.mean, values[np.isin(layers, g)]) for g in groups])
        if stat + "_null_std" in per_layer:  # layers are independent under the null
            values = np.asarray(per_layer[stat + "_null_std"], float)
            errors = per_layer.get(stat + "_null_std_se")
            errors = np.zeros_like(values) if errors is None else np.asarray(errors, float)
            pairs = [_mean_std(values[np.isin(layers, g)], errors[np.isin(layers, g)]) for g in groups]
            out[stat + "_null_std"] = np.array([p[0] for p in pairs])
            out[stat + "_null_std_se"] = np.array([p[1] for p in pairs])
            if stat + "_null_mean_se" in per_layer:
                mean_se = np.asarray(per_layer[stat + "_null_mean_se"], float)
                out[stat + "_null_mean_se"] = np.array([_mean_error(mean_se[np.isin(layers, g)]) for g in groups])
            _add_z(out, stat)
    return out


def relative_change(base: npt.ArrayLike, other: npt.ArrayLike) -> np.ndarray:
    """`(base - other) / base`, the source's "improvement" (positive when `other` is smaller);
    NaN where `base` is 0."""
    base, other = np.asarray(base, float), np.asarray(other, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base != 0, (base - other) / np.where(base != 0, base, 1.0), np.nan)


def model_values(table: dict[str, np.ndarray], per_layer: dict[str, np.ndarray], stat: str) -> dict[str, float | None]:
    """Model-level aggregates of one stat: median and mean over layers of the per-layer mean, the
    pseudo-bulk (when the table has `kv_head`), the null of the mean over layers (`null_mean`,
    `null_std`: layers independent, so `sqrt(sum std_l^2) / L` from each layer mean's null std)
    with the Monte Carlo errors of that std (`null_std_se`) and of the null mean (`null_mean_se`),
    whether it is `resolved` (`spectral.resolved`), the `z` of the mean (`spectral.null_z`, counting
    the null mean's error) and its effect sizes `diff` (mean - null mean) and
    `ratio` (mean / null mean), and the mean per-head z."""

    def clean(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    out = {
        "median_over_layers": clean(_nan_reduce(np.median, per_layer[stat])),
        "mean_over_layers": clean(_nan_reduce(np.mean, per_layer[stat])),
    }
    if "kv_head" in table:
        out["pseudo_bulk"] = clean(pseudo_bulk(table, stat)[1])
    if stat + "_null_mean" in per_layer:
        out["null_mean"] = clean(_nan_reduce(np.mean, per_layer[stat + "_null_mean"]))
    if stat + "_null_std" in per_layer:  # of the mean over layers, layers independent under the null
        std, se = _mean_std(per_layer[stat + "_null_std"], per_layer.get(stat + "_null_std_se"))
        out["null_std"], out["null_std_se"] = clean(std), clean(se)
        mean_se = _mean_error(per_layer[stat + "_null_mean_se"]) if stat + "_null_mean_se" in per_layer else 0.0
        out["null_mean_se"] = clean(mean_se)
        out["resolved"] = bool(resolved(std, se))
        if out["null_mean"] is not None and out["null_std"] and out["mean_over_layers"] is not None:
            out["z"] = float(null_z(out["mean_over_layers"], out["null_mean"], out["null_std"], mean_se))
    if out.get("null_mean") is not None and out["mean_over_layers"] is not None:
        diff, ratio = effect_sizes(out["mean_over_layers"], out["null_mean"])
        out["diff"], out["ratio"] = clean(float(diff)), clean(float(ratio))
    if f"{stat}_z" in table:
        out["mean_z"] = clean(_nan_reduce(np.mean, table[f"{stat}_z"]))
    return out


def layer_table(table: dict[str, np.ndarray], stats: Sequence[str], spread: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """`layer_means` of `stats`, then (with `kv_head`) each stat's per-layer pseudo-bulk `X_bulk`,
    then each `spread` stat's coefficient of variation over the layer's heads `X_cv` (NaN-ignoring
    std / mean): the rows of `layers.csv`."""
    per_layer = layer_means(table, stats)
    if "kv_head" in table:
        for stat in stats:
            per_layer[f"{stat}_bulk"] = pseudo_bulk(table, stat)[0]
    layers = np.asarray(table["layer"])
    for stat in spread:
        values = np.asarray(table[stat], float)
        per_layer[f"{stat}_cv"] = np.array(
            [np.nanstd(values[layers == i]) / np.nanmean(values[layers == i]) for i in per_layer["layer"]])
    return per_layer


def by_kind(matrices: dict[str, np.ndarray], stats: Sequence[str]) -> dict[str, dict[str, dict[str, object]]]:
    """Per matrix kind (`attn.q`, ..., in table order), per stat: the mean over layers of the
    stat (`mean`) and of its `_null_mean`, `_diff`, `_ratio`, `_z` and `_shuffle_mean` columns where
    present, as JSON values. The z is averaged over the matrices whose null is resolved
    (`spectral.resolved`) only, and is None when none is."""
    out = {}
    for kind in dict.fromkeys(matrices["matrix"].tolist()):
        rows = matrices["matrix"] == kind
        out[kind] = {}
        for stat in stats:
            kept = {suffix: rows for suffix in ("", "_null_mean", "_diff", "_ratio", "_shuffle_mean")}
            if stat + "_null_std" in matrices:
                kept["_z"] = rows & resolved(matrices[stat + "_null_std"], matrices.get(stat + "_null_std_se"))
            out[kind][stat] = {suffix.lstrip("_") or "mean": json_value(finite_mean(np.asarray(matrices[stat + suffix], float)[where]))
                               for suffix, where in kept.items() if stat + suffix in matrices}
    return out
