"""A torch-free, read-only safetensors reader.

The format: an 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`),
then the raw little-endian tensor bytes, offsets relative to the end of the header.

Reading is explicit (`seek` + `readinto` into a fresh numpy buffer) rather than memory
mapped, so the memory a tensor costs is exactly its own bytes and is released as soon as
the caller drops it; files are only ever opened for reading, and only regular files (a FIFO
would block forever). The header is validated in full before any data is touched, so a
truncated or corrupt file fails with an error that names the file and the tensor.

Validation is at least as strict as the official `safetensors` library's, which runs first on
every file (`safe_open` parses and checks the header in Rust without reading tensor data). It
cannot serve alone: it does not expose each tensor's byte offsets, which the row-slice reads
need, and its errors do not name the tensor. So the header is parsed here as well, with the
same rules (known dtypes, shape x dtype = byte span, ranges contiguous from the start of the
data to the end of the file, no duplicated names) and messages naming the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from collections.abc import Mapping
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

from spectrax.io.errors import CheckpointError, UnsupportedCheckpointError

__all__ = [
    "TensorInfo",
    "SafetensorsFile",
    "read_header",
    "read_tensor",
    "read_rows",
    "FLOAT_DTYPES",
    "MAX_TENSORS_PER_FILE",
    "QUANTIZED_DTYPES",
    "load_json",
    "open_regular",
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
_MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
# Stricter than the library, which allows any count under its header limit: the largest
# published shards hold a few thousand tensors, and parsing a million entries costs minutes of
# Python and a gigabyte, so a header claiming more is refused before it is parsed.
MAX_TENSORS_PER_FILE = 100_000
# Bits per element of every dtype tag the format defines (the quantized ones are refused later,
# by name, but their byte spans are checked like any other).
_BITS: Mapping[str, int] = {
    **{tag: 8 * dt.itemsize for tag, dt in FLOAT_DTYPES.items()},
    **{tag: 8 * dt.itemsize for tag, dt in _INT_DTYPES.items()},
    "F8_E4M3": 8, "F8_E5M2": 8, "F8_E4M3FN": 8, "F8_E8M0": 8, "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4,
    "I8": 8, "U16": 16, "U32": 32, "U64": 64, "I4": 4, "U4": 4, "C64": 64,
}


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


def open_regular(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """`open(path, "rb")` for a regular file only; a FIFO, device or folder is refused without
    blocking (opened non-blocking, then checked with `fstat`)."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a {what}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open the {what} ({e.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: not a regular file (a folder, FIFO or device); spectrax reads {what}s from regular files only")
    return os.fdopen(fd, "rb")


def load_json(data: bytes | str, where: str) -> Any:
    """Strict JSON: duplicated keys and nesting too deep for the parser are errors naming `where`."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise CheckpointError(f"{where}: key {dup!r} appears twice")
        return out

    try:
        return json.loads(data, object_pairs_hook=no_duplicates)
    except RecursionError:
        raise CheckpointError(f"{where}: JSON nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: not valid JSON ({e})") from None


def read_header(path: str | os.PathLike) -> SafetensorsFile:
    """Parse and validate the header of a safetensors file without reading tensor data.

    Raises `CheckpointError` naming the file (and tensor) when the file is not a regular file,
    is shorter than its header says, the header is not valid JSON or repeats a name, an entry is
    malformed or has an unknown dtype, a byte range disagrees with the tensor's shape and dtype,
    or the ranges leave a gap, overlap, or do not end at the end of the file.
    """
    path = os.fspath(path)
    with open_regular(path, "safetensors file") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: file is {size} bytes, too short to be safetensors (truncated?)")
        header_len = int.from_bytes(prefix, "little")
        if header_len > _MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: header of {header_len} bytes exceeds the safetensors limit of "
                                  f"{_MAX_HEADER_BYTES} (not a safetensors file?)")
        if header_len > size - 8:
            raise CheckpointError(f"{path}: header claims {header_len} bytes but the file has {size - 8} after the "
                                  "length field (truncated file or not safetensors)")
        raw = f.read(header_len)
    entries = raw.count(b'"data_offsets"')  # a C-speed scan, so a hostile header costs no parse
    if entries > MAX_TENSORS_PER_FILE:
        raise CheckpointError(f"{path}: header lists {entries} tensors, more than any checkpoint has "
                              f"(spectrax reads at most {MAX_TENSORS_PER_FILE} per file)")
    header = load_json(raw, f"{path}: malformed safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: malformed safetensors header (expected a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: malformed safetensors header (__metadata__ must map names to strings)")
    data_start = 8 + header_len
    tensors = {name: _parse_entry(path, name, entry, data_start) for name, entry in header.items()}
    _check_contiguous(path, tensors.values(), data_start, size)
    _library_check(path)
    return SafetensorsFile(path=path, tensors=tensors, metadata=metadata, size=size)


def _library_check(path: str) -> None:
    """The official library's own validation (header only; nothing is read from the data)."""
    try:
        with safe_open(path, framework="numpy"):
            pass
    except SafetensorError as e:
        raise CheckpointError(f"{path}: refused by the safetensors library ({e})") from None


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_entry(path: str, name: str, entry: Any, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}: {str(entry)[:80]}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _BITS:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {str(dtype)[:20]!r}")
    if not (isinstance(shape, list) and all(_whole(d) and d >= 0 for d in shape)):
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed shape {str(shape)[:80]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_whole(o) for o in offsets)):
        raise CheckpointError(f"{path}: tensor {name!r} has malformed data_offsets {str(offsets)[:80]}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {offsets} out of order")
    expected = math.prod(shape) * _BITS[dtype]
    if expected != 8 * (end - begin):
        raise CheckpointError(f"{path}: tensor {name!r} ({dtype}, shape {tuple(shape)}) needs {expected / 8:g} bytes "
                              f"but its data_offsets span {end - begin}")
    return TensorInfo(name, path, dtype, tuple(shape), data_start + begin, data_start + end)


def _check_contiguous(path: str, infos, data_start: int, size: int) -> None:
    """Byte ranges must tile the data exactly: no gap, no overlap (zero-size tensors included)."""
    position, previous = data_start, None
    for info in sorted(infos, key=lambda i: (i.start, i.end)):
        if info.start != position:
            what = (f"overlaps {previous.name!r}" if info.start < position else "leaves a gap before it") if previous \
                else "does not start at the beginning of the data"
            raise CheckpointError(f"{path}: tensor {info.name!r} {what} (byte {info.start - data_start}, "
                                  f"expected {position - data_start})")
        position, previous = info.end, info
    if position != size:
        raise CheckpointError(
            f"{path}: tensors end at byte {position} but the file has {size} bytes "
            + ("(truncated file)" if position > size else "(data not covered by the header)"))


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
