"""A torch-free, read-only safetensors reader.

The format: an 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`),
then the raw little-endian tensor bytes, offsets relative to the end of the header.

Reading is explicit (`seek` + `readinto` into a fresh numpy buffer) rather than memory
mapped, so the memory a tensor costs is exactly its own bytes and is released as soon as
the caller drops it; files are only ever opened for reading. The header is validated in
full before any data is touched, so a truncated or corrupt file fails with an error that
names the file and the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from spectrax.io.errors import CheckpointError, UnsupportedCheckpointError

__all__ = [
    "TensorInfo",
    "SafetensorsFile",
    "read_header",
    "read_tensor",
    "read_rows",
    "FLOAT_DTYPES",
    "QUANTIZED_DTYPES",
]

# Dtypes whose values are the weights themselves (an SVD of them means something).
FLOAT_DTYPES: Mapping[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_INT_DTYPES: Mapping[str, np.dtype] = {
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
# Storage formats of quantized checkpoints: codes, not weights. Reading them as numbers
# and taking an SVD would produce meaningless statistics, so they are refused by name.
QUANTIZED_DTYPES = frozenset(
    {"F8_E4M3", "F8_E5M2", "F8_E4M3FN", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "I8", "U16", "U32", "U64", "I4", "U4"}
)
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: `file`, its `dtype` tag, `shape`, and absolute byte range."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def is_quantized(self) -> bool:
        return self.dtype in QUANTIZED_DTYPES

    def numpy_dtype(self) -> np.dtype:
        if self.dtype in FLOAT_DTYPES:
            return FLOAT_DTYPES[self.dtype]
        if self.dtype in _INT_DTYPES:
            return _INT_DTYPES[self.dtype]
        if self.is_quantized:
            raise UnsupportedCheckpointError(
                f"{self.file}: tensor {self.name!r} is stored as {self.dtype}, a quantized format; "
                "spectrax analyzes full-precision weights only (F32, F16, BF16). "
                "Use the unquantized release of this model."
            )
        raise CheckpointError(f"{self.file}: tensor {self.name!r} has unknown dtype {self.dtype!r}")


@dataclasses.dataclass(frozen=True)
class SafetensorsFile:
    """The parsed header of one `.safetensors` file."""

    path: str
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]
    size: int


def read_header(path: str | os.PathLike) -> SafetensorsFile:
    """Parse and validate the header of a safetensors file without reading tensor data.

    Raises `CheckpointError` naming the file (and tensor) when the file is shorter than its
    header says, the header is not valid JSON, an entry is malformed, byte ranges overlap,
    or a range disagrees with the tensor's shape and dtype.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: file is {size} bytes, too short to be safetensors (truncated?)")
            header_len = int.from_bytes(prefix, "little")
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{path}: header claims {header_len} bytes but the file has {size - 8} after the length "
                    "field (truncated file or not safetensors)"
                )
            raw = f.read(header_len)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: malformed safetensors header (not valid JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: malformed safetensors header (expected a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    tensors = {name: _parse_entry(path, name, entry, data_start, size) for name, entry in header.items()}
    _check_no_overlap(path, tensors.values())
    return SafetensorsFile(path=path, tensors=tensors, metadata=metadata, size=size)


def _parse_entry(path: str, name: str, entry: Any, data_start: int, size: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}: {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise CheckpointError(f"{path}: tensor {name!r} has malformed data_offsets {offsets!r}")
    begin, end = offsets
    info = TensorInfo(name, path, str(dtype), tuple(shape), data_start + begin, data_start + end)
    if not 0 <= begin <= end:
        raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {offsets} out of order")
    if info.end > size:
        raise CheckpointError(
            f"{path}: tensor {name!r} ends at byte {info.end} but the file has {size} bytes (truncated file)"
        )
    if dtype in FLOAT_DTYPES or dtype in _INT_DTYPES:
        expected = math.prod(shape) * info.numpy_dtype().itemsize
        if expected != info.nbytes:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({dtype}, shape {tuple(shape)}) needs {expected} bytes "
                f"but its data_offsets span {info.nbytes}"
            )
    return info


def _check_no_overlap(path: str, infos) -> None:
    previous = None
    for info in sorted(infos, key=lambda i: (i.start, i.end)):
        if previous is not None and info.start < previous.end and info.nbytes and previous.nbytes:
            raise CheckpointError(f"{path}: tensors {previous.name!r} and {info.name!r} overlap in the file")
        previous = info


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Read one whole tensor into a new numpy array of its stored dtype (bf16 via ml_dtypes)."""
    return read_rows(info, 0, info.shape[0] if info.shape else None)


def read_rows(info: TensorInfo, start: int, stop: int | None) -> np.ndarray:
    """Read rows `start:stop` along axis 0 of a tensor, touching only those bytes.

    Returns an array of shape `(stop - start, *shape[1:])`; a 0-d tensor is read whole
    (pass `stop=None`).
    """
    dtype = info.numpy_dtype()
    if not info.shape:
        count, offset, shape = 1, info.start, ()
    else:
        rows = info.shape[0]
        if not 0 <= start <= stop <= rows:
            raise IndexError(f"{info.file}: rows {start}:{stop} out of range for {info.name!r} with {rows} rows")
        row = math.prod(info.shape[1:])
        count, offset, shape = (stop - start) * row, info.start + start * row * dtype.itemsize, (stop - start, *info.shape[1:])
    out = np.empty(count, dtype=dtype)
    with open(info.file, "rb") as f:
        f.seek(offset)
        got = f.readinto(memoryview(out.view(np.uint8)))
    if got != out.nbytes:
        raise CheckpointError(f"{info.file}: tensor {info.name!r} truncated (read {got} of {out.nbytes} bytes)")
    return out.reshape(shape)
