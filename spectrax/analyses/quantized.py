"""Quantization-aware nulls: Gaussian stand-ins stored the way the weights are, and the weights'
own rounding error estimated from their block scales.

A weight stored in a GGUF block type (Q4_0, Q8_0, ...) is a float matrix rounded block by block:
runs of 32 consecutive entries of a stored row (the input dimension of the `(out, in)`
projection) share one scale. Its spectrum is the weights' plus that rounding, so the per-matrix
nulls (`rank`, `esd`) and the per-head nulls (`laws`, `kernel`) compare a quantized matrix with
Gaussian matrices quantized and dequantized in the same type along the same axis
(`spectrax.io.gguf.quantize_roundtrip`) before their statistics. A query, key or value head is a
slice of whole stored rows, so quantizing a Gaussian head row by row is what the file did to the
real one; `attn.o` is analyzed as W_O^T, whose stored rows run along its first axis
(`stored_axis`). Float types, and the types `gguf` can only decode (K- and IQ-types), keep the
Gaussian null: every function here returns None for them, and the callers leave their float
code path (and its numbers) untouched.

`block_scale_error` is the relative rounding error of the stored weights themselves. For the
legacy block types each block's scale d is recovered exactly from its dequantized entries (the
entry of largest magnitude, or the block's extremes, sits on the end of the grid: Q8_0
d = max|x| / 127, Q4_0 max|x| / 8, Q5_0 max|x| / 16, Q4_1 (max - min) / 15, Q5_1 (max - min) / 31),
and rounding to the nearest of a grid of step d leaves an error of variance d^2 / 12 per entry:
`sqrt(mean d^2 / 12) / rms(W)`. Other types give NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np

from spectrax.io.gguf import quantize_roundtrip

__all__ = ["NoiseGroup", "block_scale_error", "head_spectra", "noise_groups", "noise_matrix", "noise_spectra", "stored_axis"]

# Legacy block types: (block length, how its scale d follows from the dequantized block `(..., n)`).
_SCALES = {
    "Q8_0": (32, lambda b: np.max(np.abs(b), axis=-1) / 127),
    "Q4_0": (32, lambda b: np.max(np.abs(b), axis=-1) / 8),
    "Q5_0": (32, lambda b: np.max(np.abs(b), axis=-1) / 16),
    "Q4_1": (32, lambda b: np.ptp(b, axis=-1) / 15),
    "Q5_1": (32, lambda b: np.ptp(b, axis=-1) / 31),
}


def stored_axis(matrix: str) -> int:
    """The axis of the analyzed matrix named `matrix` along which its stored rows (and so its
    quantization blocks) run: -2 for `attn.o` (analyzed as W_O^T), -1 for every other matrix."""
    return -2 if matrix == "attn.o" else -1


def _draw(key: jax.Array, shape: tuple[int, ...], kind: str | None, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(G, Q(G)): a unit-variance Gaussian array of `shape` and its round trip through `kind`
    along `axis`, both float32; None where `kind` has no quantizer or `axis` is not whole blocks."""
    transposed = axis in (-2, len(shape) - 2)
    drawn = (*shape[:-2], shape[-1], shape[-2]) if transposed else tuple(shape)
    if not kind or not _quantizable(kind, drawn[-1]):  # checked first: float types draw nothing
        return None
    gaussian = np.asarray(jax.random.normal(key, drawn, np.float32))
    rounded = quantize_roundtrip(gaussian, kind)
    if rounded is None:
        return None
    if transposed:
        return np.swapaxes(gaussian, -1, -2), np.swapaxes(rounded, -1, -2)
    return gaussian, rounded


def _quantizable(kind: str, length: int) -> bool:
    """Whether rows of `length` entries can go through `kind`'s round trip (a one-row probe)."""
    return quantize_roundtrip(np.zeros((1, length), np.float32), kind) is not None


def noise_matrix(key: jax.Array, shape: tuple[int, ...], kind: str | None, *, axis: int = -1) -> np.ndarray | None:
    """A unit-variance Gaussian array of `shape (..., m, n)`, quantized and dequantized as the ggml
    type `kind` along `axis` (-1 or -2), as float32; None where `kind` is not a block type `gguf`
    can quantize or the axis is not a whole number of blocks."""
    drawn = _draw(key, shape, kind, axis)
    return None if drawn is None else drawn[1]


def noise_spectra(key: jax.Array, shape: tuple[int, ...], kind: str | None, *, num_draws: int,
                  axis: int = -1) -> tuple[np.ndarray, np.ndarray] | None:
    """Singular values `(num_draws, ..., min(m, n))` of `num_draws` `noise_matrix` draws (draw d
    from `fold_in(key, d)`), and `(num_draws,)` the relative error `|Q(G) - G| / |G|` of each
    round trip; None where `noise_matrix` is, and for `num_draws=0` (no Monte Carlo null)."""
    if num_draws == 0:
        return None
    spectra, errors = [], []
    for d in range(num_draws):
        drawn = _draw(jax.random.fold_in(key, d), shape, kind, axis)
        if drawn is None:
            return None
        gaussian, rounded = drawn
        errors.append(np.linalg.norm(rounded - gaussian) / np.linalg.norm(gaussian))
        spectra.append(_singular_values(rounded))
    return np.stack(spectra).astype(np.float32), np.asarray(errors, np.float32)


class NoiseGroup(NamedTuple):
    """Matrices of one shape, storage type and stored axis, which share one quantization-aware null.

    `members`: their positions in the list handed to `noise_groups`; `spectra`: `(num_draws, B, k)`
    the singular values of each member's `noise_spectra` draws (unit variance), None for a type
    `gguf` cannot quantize (those keep their Gaussian null); `error`: the mean relative round-trip
    error over those draws (NaN without them)."""

    members: tuple[int, ...]
    spectra: np.ndarray | None
    error: np.float32


def noise_groups(key: jax.Array, names: Sequence[str], shape: tuple[int, int], storage: Mapping[str, str] | None, *,
                 num_draws: int) -> list[NoiseGroup]:
    """The matrices `names`, all of `shape`, grouped by (storage type, stored axis), with the quantized
    Gaussian draws of each member (`noise_spectra`, member j's draws from `fold_in(key, j)`), for
    nulls pooled over each group: every member of a group has one null up to its scale, so the
    group's draws together are each member's null (`rank`, `esd`)."""
    by_storage: dict[tuple[str, int], list[int]] = {}
    for j, name in enumerate(names):
        by_storage.setdefault(((storage or {}).get(name) or "", stored_axis(name)), []).append(j)
    groups = []
    for (kind, axis), members in by_storage.items():
        drawn = [noise_spectra(jax.random.fold_in(key, j), shape, kind, num_draws=num_draws, axis=axis) for j in members]
        if drawn[0] is None:
            groups.append(NoiseGroup(tuple(members), None, np.float32(np.nan)))
            continue
        groups.append(NoiseGroup(tuple(members), np.stack([spectra for spectra, _ in drawn], axis=1),
                                 np.float32(np.mean([errors for _, errors in drawn]))))
    return groups


def _singular_values(w: np.ndarray) -> np.ndarray:
    """Singular values `(..., k)`, descending, of `w (..., m, n)` from the float64 Gram matrix of
    its shorter side: numpy, so no compiled program is added, and several times faster than
    numpy's SVD; far more accurate than float32 for the well-conditioned noise matrices drawn here."""
    w = np.asarray(w, np.float64)
    gram = w @ np.swapaxes(w, -1, -2) if w.shape[-2] <= w.shape[-1] else np.swapaxes(w, -1, -2) @ w
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[..., ::-1], 0, None))


def head_spectra(key: jax.Array, heads: Mapping[str, np.ndarray], storage: Mapping[str, str] | None, *,
                 num_draws: int) -> dict[str, np.ndarray]:
    """Spectra `(num_draws, ..., heads, min(D, E))` of unit-variance Gaussian stand-ins for the
    query/key/value heads `{m: (..., heads, D, E)}` whose projection `attn.<m>` is stored in a
    quantizable type, quantized along E as the file quantized the projection's rows; the other
    heads are absent (their Gaussian null stands). `key` is folded per matrix, so the draws do not
    depend on which others are quantized."""
    out = {}
    for i, (m, x) in enumerate(heads.items()):
        got = noise_spectra(jax.random.fold_in(key, i), np.shape(x), (storage or {}).get(f"attn.{m}"),
                            num_draws=num_draws)
        if got is not None:
            out[m] = got[0]
    return out


def block_scale_error(w: np.ndarray, kind: str | None, *, axis: int = -1) -> np.float32:
    """Estimated relative rounding error `sqrt(mean d^2 / 12) / rms(w)` of the dequantized matrix
    `w (m, n)` stored as `kind` with blocks along `axis`, from each block's scale d (module
    docstring); NaN for types without a scale rule here, or a row that is not whole blocks."""
    rule = _SCALES.get(kind or "")
    w = np.asarray(w)
    w = np.swapaxes(w, -1, -2) if axis in (-2, w.ndim - 2) else w
    if rule is None or w.shape[-1] % rule[0]:
        return np.float32(np.nan)
    length, scale = rule
    rows = w.reshape(-1, w.shape[-1])
    sum_d2 = sum_w2 = 0.0
    # ~4M entries at a time: an embedding is summed without a float64 copy of it.
    for chunk in np.array_split(rows, max(1, rows.size >> 22)):
        chunk = chunk.astype(np.float64)
        sum_d2 += float(np.sum(np.square(scale(chunk.reshape(-1, length)))))
        sum_w2 += float(np.sum(np.square(chunk)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.float32(np.sqrt(sum_d2 / (rows.size // length) / 12) / np.sqrt(sum_w2 / rows.size))
