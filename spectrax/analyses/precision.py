"""The "third law" of the five-laws document (docs/statistics.md §1): depth limits per floating format.

The source proposes a maximum useful depth

    L_max = min(L_info, L_quant, L_dyn)
    L_info  = 1 / mean(SSR)                 SSR: the Q/K spectral shape residual (`ssr_qk`)
    L_quant = 3 * 2^(2m)                    m: mantissa bits of the format (stored, not counting
                                            the implicit leading bit: bf16 7, f16 10, f32 23)
    L_dyn   = log2(max finite) / log2(kappa)   kappa: condition number

and evaluates it for one format with the condition number fixed at kappa = 2 instead of measuring
it. spectrax computes every term from the format's own constants (`ml_dtypes.finfo`: `nmant`,
`max`) for each format in `FORMATS`, takes kappa as an argument, and can feed the measured per-head
condition numbers (`laws` reports `cond_q`, `cond_k`). What changes with measured kappa: L_dyn
scales as 1 / log2(kappa), and a measured kappa can sit far from 2 either way. A random Gaussian
`(128, 4096)` head has kappa ~ 1.4 (L_dyn ~ 2x the source's); a trained head with kappa = 100 has
log2 kappa ~ 6.6, so bf16's L_dyn drops from 128 to ~19. The binding term can then move between
L_info, L_quant and L_dyn, and the depth limit with it. `precision_table` reports both columns.

This is the source's heuristic, not a derived bound. L_quant reads as the depth at which per-layer
rounding errors of relative variance 2^(-2m) / 3 (uniform in +-2^-m, one ulp at 1: twice the
round-to-nearest bound) add up to 1; L_dyn as the depth at which a scale growing by kappa per
layer overflows; L_info as the inverse of a shape residual. None of the three is proven to limit
depth, they share no unit, and the formula ignores normalization layers (which reset the scale
every block), subnormals and underflow at the low end, and accumulation in higher precision.
Report it as the source's formula, with its inputs explicit.

Edge cases, no exception: `mean_ssr = 0` gives `L_info = inf`; NaN `mean_ssr` (no SSR measured)
gives NaN `L_info`; `kappa <= 1` gives `L_dyn = inf` (no growth, no dynamic-range limit); NaN
kappa (a head that could not be measured) gives NaN `L_dyn` and is left out of the median and min
over heads. Any NaN term makes `L_max` NaN and `binding` "" (the minimum is unknown). A negative
SSR or kappa is refused with a ValueError naming it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import ml_dtypes
import numpy as np
import numpy.typing as npt

__all__ = ["FORMATS", "TERMS", "FormatConstants", "depth_limits", "format_constants", "precision_table"]

FORMATS = ("float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2")
TERMS = ("info", "quant", "dyn")  # order also breaks ties in `binding`


class FormatConstants(NamedTuple):
    """name: dtype name. mantissa_bits: stored fraction bits (`finfo.nmant`). max_finite: largest
    finite value (`finfo.max`)."""

    name: str
    mantissa_bits: int
    max_finite: float


def format_constants(fmt) -> FormatConstants:
    """Constants of a floating format given by name (`"bfloat16"`, `"float8_e4m3fn"`) or dtype."""
    try:
        dtype = np.dtype(getattr(ml_dtypes, fmt) if isinstance(fmt, str) and hasattr(ml_dtypes, fmt) else fmt)
    except TypeError as err:
        raise ValueError(f"unknown floating format {fmt!r}") from err
    if dtype.kind == "c":
        raise ValueError(f"fmt must be a real floating format, got {dtype}")
    try:
        info = ml_dtypes.finfo(dtype)  # numpy's and ml_dtypes' floats alike; refuses integers
    except ValueError as err:
        raise ValueError(f"fmt must be a real floating format, got {dtype}") from err
    return FormatConstants(dtype.name, int(info.nmant), float(info.max))


def _nonnegative(value, name: str) -> np.ndarray:
    """`value` as float64; NaN passes (unmeasured), negative values are refused."""
    arr = np.asarray(value, np.float64)
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0 (or NaN when unmeasured), got {np.min(arr)}")
    return arr


def _l_dyn(log2_max: float, kappa: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = log2_max / np.log2(kappa)
    # kappa <= 1: no growth per layer, so no dynamic-range limit (log2 would give -x or /0).
    return np.where(kappa <= 1, np.inf, out)


def _binding(l_info, l_quant, l_dyn):
    """Name of the smallest term (`TERMS` order breaks ties); "" where any term is NaN."""
    terms = np.stack(np.broadcast_arrays(np.float64(l_info), np.float64(l_quant), np.asarray(l_dyn, np.float64)))
    names = np.asarray(TERMS, dtype=object)[np.argmin(np.where(np.isnan(terms), np.inf, terms), axis=0)]
    return np.where(np.any(np.isnan(terms), axis=0), "", names).astype(object)


def _l_max(l_info, l_quant, l_dyn):
    # np.minimum propagates NaN: with one term unknown, the minimum is unknown.
    return np.minimum(np.minimum(l_info, l_quant), l_dyn)


def _scalar(x):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x


def depth_limits(mean_ssr: float, kappa: npt.ArrayLike, fmt) -> dict:
    """The third law's terms for one format.

    Args:
      mean_ssr: mean Q/K spectral shape residual (scalar, >= 0 or NaN).
      kappa: condition number, a scalar or an array of measured per-head values of any shape,
        e.g. `(layers, heads)` (>= 0 or NaN; <= 1 means no dynamic-range limit).
      fmt: format name or dtype, e.g. `"bfloat16"`.

    Returns:
      `format`, `mantissa_bits`, `max_finite`, `L_info`, `L_quant` (scalars), and `L_dyn`,
      `L_max`, `binding` (one of `TERMS`, "" if unknown) with `kappa`'s shape. For array kappa
      also `L_dyn_median`, `L_max_median`, `binding_median` (at the median kappa over heads) and
      `L_dyn_min`, `L_max_min`, `binding_min` (at the largest kappa: the worst head); NaN heads
      are left out of both, and with none left they are NaN / "".
    """
    ssr = _nonnegative(mean_ssr, "mean_ssr")
    if ssr.ndim:
        raise ValueError(f"mean_ssr must be a scalar, got shape {ssr.shape}")
    kappa = _nonnegative(kappa, "kappa")
    const = format_constants(fmt)
    with np.errstate(divide="ignore"):
        l_info = float(np.float64(1.0) / ssr)
    l_quant = 3.0 * 2.0 ** (2 * const.mantissa_bits)
    log2_max = math.log2(const.max_finite)
    l_dyn = _l_dyn(log2_max, kappa)
    out = {
        "format": const.name,
        "mantissa_bits": const.mantissa_bits,
        "max_finite": const.max_finite,
        "L_info": l_info,
        "L_quant": l_quant,
        "L_dyn": _scalar(l_dyn),
        "L_max": _scalar(_l_max(l_info, l_quant, l_dyn)),
        "binding": _scalar(_binding(l_info, l_quant, l_dyn)),
    }
    if kappa.ndim:
        measured = kappa[~np.isnan(kappa)]
        for tag, k in (("median", np.median), ("min", np.max)):  # largest kappa -> smallest L_dyn
            summary = _l_dyn(log2_max, np.float64(k(measured))) if measured.size else np.float64(np.nan)
            out[f"L_dyn_{tag}"] = float(summary)
            out[f"L_max_{tag}"] = float(_l_max(l_info, l_quant, summary))
            out[f"binding_{tag}"] = _binding(l_info, l_quant, summary).item()
    return out


def precision_table(mean_ssr: float, kappa_fixed: float = 2.0, measured_kappa: npt.ArrayLike | None = None,
                    formats=FORMATS) -> dict[str, np.ndarray]:
    """One row per format: the third law with the source's fixed kappa and with measured kappa.

    Args:
      mean_ssr: mean Q/K SSR over the model (scalar, >= 0; NaN if not measured).
      kappa_fixed: the source's fixed condition number (2).
      measured_kappa: measured per-head condition numbers, any shape (e.g. `cond_q` and `cond_k`
        of every head), or None.
      formats: format names or dtypes, default `FORMATS`.

    Returns:
      Columns `format`, `mantissa_bits`, `max_finite`, `L_info`, `L_quant`, `kappa_fixed`,
      `L_dyn_fixed`, `L_max_fixed`, `binding_fixed`, then `kappa_measured` (median over heads,
      NaN heads left out), `L_dyn_measured`, `L_max_measured`, `binding_measured` at that median,
      and `L_dyn_measured_min`, `L_max_measured_min` at the worst (largest-kappa) head. Measured
      columns are NaN (binding "") when `measured_kappa` is None, empty or all NaN.
    """
    fixed_kappa = _nonnegative(kappa_fixed, "kappa_fixed")
    if fixed_kappa.ndim:
        raise ValueError(f"kappa_fixed must be a scalar, got shape {fixed_kappa.shape}")
    measured = None if measured_kappa is None else _nonnegative(measured_kappa, "measured_kappa").reshape(-1)
    if measured is not None and not (~np.isnan(measured)).any():
        measured = None
    kappa_measured = np.nan if measured is None else float(np.median(measured[~np.isnan(measured)]))
    rows = []
    for fmt in formats:
        fixed = depth_limits(mean_ssr, float(fixed_kappa), fmt)
        row = {
            "format": fixed["format"],
            "mantissa_bits": fixed["mantissa_bits"],
            "max_finite": fixed["max_finite"],
            "L_info": fixed["L_info"],
            "L_quant": fixed["L_quant"],
            "kappa_fixed": float(fixed_kappa),
            "L_dyn_fixed": fixed["L_dyn"],
            "L_max_fixed": fixed["L_max"],
            "binding_fixed": fixed["binding"],
            "kappa_measured": kappa_measured,
            "L_dyn_measured": np.nan,
            "L_max_measured": np.nan,
            "binding_measured": "",
            "L_dyn_measured_min": np.nan,
            "L_max_measured_min": np.nan,
        }
        if measured is not None:
            per_head = depth_limits(mean_ssr, measured, fmt)
            row.update(L_dyn_measured=per_head["L_dyn_median"], L_max_measured=per_head["L_max_median"],
                       binding_measured=per_head["binding_median"], L_dyn_measured_min=per_head["L_dyn_min"],
                       L_max_measured_min=per_head["L_max_min"])
        rows.append(row)
    text = ("format", "binding_fixed", "binding_measured")
    return {c: np.array([r[c] for r in rows], dtype=object if c in text else None) for c in rows[0]}
