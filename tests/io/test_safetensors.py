"""The torch-free reader agrees with the `safetensors` package and refuses broken files clearly."""

import json
import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from spectrax.io import CheckpointError, UnsupportedCheckpointError, read_header, read_rows, read_tensor
from tests.conftest import CHECKPOINTS


@pytest.mark.parametrize("name", ["llama", "llama_bf16", "gpt2_bf16", "bert"])
def test_reader_matches_safetensors_package(name):
    path = CHECKPOINTS / name / "model.safetensors"
    expected = load_file(path)
    header = read_header(path)
    assert set(header.tensors) == set(expected)
    for tensor, info in header.tensors.items():
        got = read_tensor(info)
        assert got.dtype == expected[tensor].dtype
        np.testing.assert_array_equal(got, expected[tensor])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_row_slices_read_only_those_rows(tmp_path, dtype):
    rng = np.random.default_rng(0)
    array = rng.standard_normal((7, 3, 5)).astype(dtype)
    save_file({"w": array, "b": array[0, 0]}, tmp_path / "x.safetensors")
    info = read_header(tmp_path / "x.safetensors").tensors["w"]
    np.testing.assert_array_equal(read_rows(info, 2, 5), array[2:5])
    np.testing.assert_array_equal(read_rows(info, 0, 0), array[:0])
    with pytest.raises(IndexError, match="out of range"):
        read_rows(info, 5, 9)


def _copy(tmp_path, name="llama"):
    dst = tmp_path / name
    shutil.copytree(CHECKPOINTS / name, dst)
    return dst


def test_truncated_file_names_file_and_tensor(tmp_path):
    path = _copy(tmp_path) / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        read_header(path)


def test_file_shorter_than_length_field(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="too short"):
        read_header(path)


def test_malformed_header(tmp_path):
    path = _copy(tmp_path) / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"#!?%"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: malformed safetensors header"):
        read_header(path)


def _raw_file(path, header: dict, payload: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + payload)


def test_offsets_disagreeing_with_shape(tmp_path):
    path = tmp_path / "x.safetensors"
    _raw_file(path, {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, bytes(16))
    with pytest.raises(CheckpointError, match="'w'.*needs 16 bytes"):
        read_header(path)


def test_overlapping_tensors(tmp_path):
    path = tmp_path / "x.safetensors"
    _raw_file(path, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12))
    with pytest.raises(CheckpointError, match="overlap"):
        read_header(path)


@pytest.mark.parametrize("dtype", ["F8_E4M3", "I8"])
def test_quantized_dtypes_are_refused_on_read(tmp_path, dtype):
    path = tmp_path / "x.safetensors"
    _raw_file(path, {"w": {"dtype": dtype, "shape": [4], "data_offsets": [0, 4]}}, bytes(4))
    info = read_header(path).tensors["w"]
    with pytest.raises(UnsupportedCheckpointError, match=f"'w' is stored as {dtype}, a quantized format"):
        read_tensor(info)
