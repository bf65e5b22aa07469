"""Hostile and unlucky inputs to the loader, as a careless user or a damaged download makes them.

Every case: exit code 2 from `spectrax inspect`, one line naming the file, tensor or field, bounded
time (a hang would fail the subprocess timeout) and memory, and the checkpoint byte-identical.
A property test mutates valid headers and checks the reader against the official library.
"""

import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from spectrax.cli import main
from spectrax.io import CheckpointError
from spectrax.io.safetensors import read_header, read_tensor
from tests.conftest import CHECKPOINTS, snapshot

Q = "model.layers.0.self_attn.q_proj.weight"
K = "model.layers.0.self_attn.k_proj.weight"


def _copy(tmp_path, name="llama"):
    return shutil.copytree(CHECKPOINTS / name, tmp_path / name)


def _split(path):
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _write(path, header, data, *, text=None):
    raw = (text if text is not None else json.dumps(header)).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def _refused(capsys, path, *needles, memory_mb=64):
    """`spectrax inspect path` exits 2 with one line holding every needle, within `memory_mb`."""
    before = snapshot(path if os.path.isdir(path) else os.path.dirname(path))
    tracemalloc.start()
    try:
        code = main(["inspect", str(path)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectrax inspect: error:"), err
    assert len(lines[0]) < 600, lines[0][:600]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert peak < memory_mb * 2**20, f"{peak / 2**20:.0f} MiB"
    assert snapshot(path if os.path.isdir(path) else os.path.dirname(path)) == before
    return lines[0]


# Header: silently wrong output must become an error.

def test_duplicated_key_is_refused_like_the_official_library(tmp_path, capsys):
    path = _copy(tmp_path)
    header, data = _split(path / "model.safetensors")
    text = json.dumps(header)
    dup = json.dumps({Q: header[K]})[1:-1]  # a second q_proj entry, on k_proj's bytes
    _write(path / "model.safetensors", None, data, text=text[:-1] + ", " + dup + "}")
    with pytest.raises(SafetensorError):  # what the reference implementation says
        load_file(path / "model.safetensors")
    _refused(capsys, path, "model.safetensors", Q, "twice")


def test_zero_size_tensor_cannot_hide_two_aliased_ranges(tmp_path, capsys):
    path = _copy(tmp_path)
    header, data = _split(path / "model.safetensors")
    q, k = header[Q]["data_offsets"], header[K]["data_offsets"]
    header[K]["data_offsets"] = [q[0], q[0] + k[1] - k[0]]  # k_proj reads q_proj's bytes...
    header["zz"] = {"dtype": "F32", "shape": [0], "data_offsets": [q[1], q[1]]}  # ...and an empty tensor sits between
    header["pad"] = {"dtype": "U8", "shape": [k[1] - k[0]], "data_offsets": list(k)}
    _write(path / "model.safetensors", header, data)
    _refused(capsys, path, "model.safetensors", "overlaps")


def test_non_canonical_layer_number_does_not_replace_the_real_layer(tmp_path, capsys):
    path = _copy(tmp_path)
    header, data = _split(path / "model.safetensors")
    header[Q.replace("layers.0.", "layers.00.")] = header.pop(Q)
    _write(path / "model.safetensors", header, data)
    _refused(capsys, path, "layers.00.", "non-canonical")


def test_gap_and_trailing_bytes_are_refused(tmp_path, capsys):
    path = _copy(tmp_path)
    header, data = _split(path / "model.safetensors")
    _write(path / "model.safetensors", header, data + b"\0" * 8)
    _refused(capsys, path, "not covered")


def test_integer_weights_never_reach_the_kernels(tmp_path, capsys):
    path = _copy(tmp_path)
    header, data = _split(path / "model.safetensors")
    header[Q]["dtype"] = "I32"  # same bytes, read as integers
    _write(path / "model.safetensors", header, data)
    _refused(capsys, path, "int32", "floating-point")


# Costs follow the checkpoint's real size, not what a header or config claims.

@pytest.mark.slow
def test_huge_tensor_shape_is_refused_from_the_header_before_any_read(tmp_path, capsys):
    path = _copy(tmp_path)
    header, data = _split(path / "model.safetensors")
    big = {"dtype": "F32", "shape": [20000, 20000], "data_offsets": [len(data), len(data) + 20000 * 20000 * 4]}
    header["pad"] = {"dtype": "U8", "shape": [header[Q]["data_offsets"][1] - header[Q]["data_offsets"][0]],
                     "data_offsets": header[Q]["data_offsets"]}  # q_proj's old bytes, under another name
    header[Q] = big
    _write(path / "model.safetensors", header, data)
    with open(path / "model.safetensors", "r+b") as f:  # sparse: 1.6 GB on paper, nothing on disk
        f.truncate(f.seek(0, 2) + 20000 * 20000 * 4)
    _refused(capsys, path, "(20000, 20000)", memory_mb=32)


def test_header_with_a_million_entries_is_refused_before_parsing(tmp_path, capsys):
    path = _copy(tmp_path)
    entry = b'"t%07d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    raw = b"{" + b",".join(entry % i for i in range(1_440_000)) + b"}"
    (path / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)
    del raw
    _refused(capsys, path, "1440000 tensors", memory_mb=200)  # the 95 MB header itself, read once


def test_oversized_header_is_not_called_truncated(tmp_path, capsys):
    path = _copy(tmp_path)
    with open(path / "model.safetensors", "r+b") as f:
        f.write((200 * 2**20).to_bytes(8, "little"))
        f.truncate(8 + 200 * 2**20 + 16)
    message = _refused(capsys, path, "exceeds the safetensors limit")
    assert "truncated" not in message


@pytest.mark.parametrize("where", ["header", "config"])
def test_deeply_nested_json_is_one_line(tmp_path, capsys, where):
    path = _copy(tmp_path)
    deep = "[" * 200_000 + "]" * 200_000
    if where == "header":
        _write(path / "model.safetensors", None, b"", text='{"x": ' + deep + "}")
    else:
        (path / "config.json").write_text('{"model_type": "llama", "x": ' + deep + "}")
    _refused(capsys, path, "nested too deeply")


# Files that are not files, and indexes that point anywhere.

@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "model.safetensors.index.json"])
def test_a_folder_where_a_file_belongs(tmp_path, capsys, name):
    path = _copy(tmp_path, "llama_sharded" if name.endswith("index.json") else "llama")
    os.remove(path / name)
    os.mkdir(path / name)
    _refused(capsys, path, name, "folder")


@pytest.mark.parametrize("name", ["config.json", "model-00002-of-00004.safetensors"])
def test_a_fifo_never_blocks(tmp_path, name):
    path = _copy(tmp_path, "llama_sharded")
    os.remove(path / name)
    os.mkfifo(path / name)
    done = subprocess.run([sys.executable, "-m", "spectrax", "inspect", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert name in done.stderr and "regular file" in done.stderr


@pytest.mark.parametrize("value", ["..", ".", "", "sub/model.safetensors", 7, ["a"]])
def test_index_shard_names_outside_the_folder_or_not_names(tmp_path, capsys, value):
    path = _copy(tmp_path, "llama_sharded")
    (path / "sub").mkdir()
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"][Q] = value
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    _refused(capsys, path, "model.safetensors.index.json")


@pytest.mark.parametrize("weight_map", [[1, 2], "x", None])
def test_index_weight_map_not_a_mapping(tmp_path, capsys, weight_map):
    path = _copy(tmp_path, "llama_sharded")
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _refused(capsys, path, "model.safetensors.index.json", "malformed index")


def test_pickle_file_given_directly_gets_a_command_that_works(tmp_path, capsys):
    path = tmp_path / "old"
    path.mkdir()
    (path / "pytorch_model.bin").write_bytes(b"not unpickled")
    (path / "config.json").write_text("{}")
    message = _refused(capsys, path / "pytorch_model.bin", "never unpickles")
    assert f"from_pretrained('{path}')" in message and "pytorch_model.bin'" not in message.split("from_pretrained")[1]


# Property: a mutated header either loads exactly what the official library loads, or is refused.

def _valid_file(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float16),
               "c": np.zeros((0, 2), np.float32), "d": rng.standard_normal((2, 2, 2)).astype(np.float64)}
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    return path


_mutation = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("offset"), st.sampled_from("abcd"), st.integers(0, 1), st.integers(-8, 8)),
    st.tuples(st.just("dtype"), st.sampled_from("abcd"), st.sampled_from(["F32", "F16", "F64", "BF16", "I8", "U8", "XX", 3])),
    st.tuples(st.just("shape"), st.sampled_from("abcd"), st.lists(st.integers(-1, 6), max_size=3)),
    st.tuples(st.just("name"), st.sampled_from("abcd"), st.sampled_from(["a", "b", "e", "__metadata__", ""])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(_mutation, min_size=1, max_size=3))
def test_mutated_headers_load_exactly_what_the_library_loads_or_are_refused(tmp_path, mutations):
    path = _valid_file(tmp_path)
    blob = bytearray(path.read_bytes())
    n = int.from_bytes(blob[:8], "little")
    header, data = json.loads(blob[8:8 + n]), bytes(blob[8 + n:])
    raw = None
    for kind, *args in mutations:
        if kind == "byte":
            raw = bytearray(raw or json.dumps(header).encode())
            raw[args[0] % len(raw)] = args[1]
        elif args[0] in header:
            entry = header[args[0]]
            if kind == "offset":
                entry["data_offsets"][args[1]] += args[2]
            elif kind == "dtype":
                entry["dtype"] = args[1]
            elif kind == "shape":
                entry["shape"] = args[1]
            else:
                header[args[1]] = header.pop(args[0])
    raw = bytes(raw) if raw is not None else json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    try:
        expected = load_file(str(path))
    except Exception:  # noqa: BLE001  (any refusal of the reference counts; what matters is ours)
        expected = None
    try:
        ours = {name: read_tensor(info) for name, info in read_header(path).tensors.items()}
    except CheckpointError:
        ours = None
    if expected is None:
        assert ours is None  # never accept what the reference refuses
    elif ours is not None:
        assert sorted(ours) == sorted(expected)
        for name, value in expected.items():
            assert ours[name].dtype == value.dtype and ours[name].shape == value.shape
            np.testing.assert_array_equal(ours[name], value)
