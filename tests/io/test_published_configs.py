"""The `config.json` files real models ship (tests/fixtures/configs, sources in its README) are read
under strict mode: at full size by `inspect` on header-only checkpoints, and at toy size (same keys)
through the whole converter, which is what `analyze` reads before its kernels.

A header-only checkpoint is a safetensors file whose header lists the model's real tensor names,
shapes and dtypes and whose data region is a sparse hole (`truncate`): gigabytes on paper, nothing
on disk, so `inspect` sees exactly what it would see on the published checkpoint.
"""

import hashlib
import json
import os
import pathlib

import numpy as np
import pytest
from safetensors.numpy import save_file

import spectrax as sx
from spectrax.cli import main
from spectrax.io import parse_config
from tests.conftest import FIXTURES

CONFIGS = FIXTURES / "configs"
PUBLISHED = sorted(p.stem for p in CONFIGS.glob("*.json"))
_DTYPES = {"bfloat16": ("BF16", 2), "float16": ("F16", 2), "float32": ("F32", 4), None: ("F32", 4)}


def _config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def stored_tensors(spec) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes a transformers checkpoint of `spec` holds (written here from
    transformers' module names; `test_stored_tensors_are_what_the_converter_takes` checks them)."""
    c, L = spec.config, spec.num_layers
    E, H, KV, F, V = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.intermediate_size, spec.vocab_size
    D = spec.head_dims[0]
    t: dict[str, tuple[int, ...]] = {}

    def norm(name, bias=True):
        t[name + ".weight"] = (E,)
        if bias:
            t[name + ".bias"] = (E,)

    def linear(name, out, inp, bias):
        t[name + ".weight"] = (out, inp)
        if bias:
            t[name + ".bias"] = (out,)

    family = spec.model_type
    if family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2", "phi3"):
        t["model.embed_tokens.weight"] = (V, E)
        norm("model.norm", bias=False)
        for i in range(L):
            p = f"model.layers.{i}."
            qkv_bias = family == "qwen2" or bool(c.get("attention_bias"))
            if family == "phi3":
                t[p + "self_attn.qkv_proj.weight"] = ((H + 2 * KV) * D, E)
                t[p + "mlp.gate_up_proj.weight"] = (2 * F, E)
            else:
                for name, rows in (("q", H * D), ("k", KV * D), ("v", KV * D)):
                    linear(p + f"self_attn.{name}_proj", rows, E, qkv_bias)
                for name in ("gate", "up"):
                    linear(p + f"mlp.{name}_proj", F, E, bool(c.get("mlp_bias")))
            linear(p + "self_attn.o_proj", E, H * D, bool(c.get("attention_bias")) and family != "qwen2")
            linear(p + "mlp.down_proj", E, F, bool(c.get("mlp_bias")) and family != "phi3")
            if spec.qk_norm == "head":
                t[p + "self_attn.q_norm.weight"] = t[p + "self_attn.k_norm.weight"] = (D,)
            elif spec.qk_norm == "projection":
                t[p + "self_attn.q_norm.weight"], t[p + "self_attn.k_norm.weight"] = (H * D,), (KV * D,)
            names = {"olmo2": ("post_attention_layernorm", "post_feedforward_layernorm")}.get(
                family, ("input_layernorm", "post_attention_layernorm"))
            if family in ("gemma2", "gemma3_text"):
                names += ("pre_feedforward_layernorm", "post_feedforward_layernorm")
            for name in names:
                norm(p + name, bias=False)
        if not spec.tie_word_embeddings:
            t["lm_head.weight"] = (V, E)
    elif family == "gpt2":
        t["wte.weight"], t["wpe.weight"] = (V, E), (c.get("n_positions", 1024), E)
        norm("ln_f")
        for i in range(L):
            p = f"h.{i}."
            norm(p + "ln_1"), norm(p + "ln_2")
            t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"] = (E, 3 * E), (3 * E,)
            t[p + "attn.c_proj.weight"], t[p + "attn.c_proj.bias"] = (E, E), (E,)
            t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"] = (E, F), (F,)
            t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"] = (F, E), (E,)
    elif family in ("gpt_neox", "bloom"):
        root, attn = ("gpt_neox.layers.", "attention.") if family == "gpt_neox" else ("transformer.h.", "self_attention.")
        if family == "gpt_neox":
            t["gpt_neox.embed_in.weight"], t["embed_out.weight"] = (V, E), (V, E)
            norm("gpt_neox.final_layer_norm")
        else:
            t["transformer.word_embeddings.weight"] = (V, E)
            norm("transformer.word_embeddings_layernorm"), norm("transformer.ln_f")
        for i in range(L):
            p = f"{root}{i}."
            norm(p + "input_layernorm"), norm(p + "post_attention_layernorm")
            linear(p + attn + "query_key_value", 3 * E, E, True)
            linear(p + attn + "dense", E, E, True)
            linear(p + "mlp.dense_h_to_4h", F, E, True)
            linear(p + "mlp.dense_4h_to_h", E, F, True)
    elif family == "opt":
        word = c.get("word_embed_proj_dim") or E
        t["model.decoder.embed_tokens.weight"] = (V, word)
        t["model.decoder.embed_positions.weight"] = (c["max_position_embeddings"] + 2, E)
        norm("model.decoder.final_layer_norm")
        for i in range(L):
            p = f"model.decoder.layers.{i}."
            for name in ("q", "k", "v", "out"):
                linear(p + f"self_attn.{name}_proj", E, E, True)
            norm(p + "self_attn_layer_norm"), norm(p + "final_layer_norm")
            linear(p + "fc1", F, E, True), linear(p + "fc2", E, F, True)
    elif family == "bert":
        p = "bert.embeddings."
        t[p + "word_embeddings.weight"] = (V, E)
        t[p + "position_embeddings.weight"] = (c["max_position_embeddings"], E)
        t[p + "token_type_embeddings.weight"] = (c["type_vocab_size"], E)
        norm(p + "LayerNorm")
        for i in range(L):
            p = f"bert.encoder.layer.{i}."
            for name in ("query", "key", "value"):
                linear(p + f"attention.self.{name}", E, E, True)
            linear(p + "attention.output.dense", E, E, True)
            norm(p + "attention.output.LayerNorm")
            linear(p + "intermediate.dense", F, E, True), linear(p + "output.dense", E, F, True)
            norm(p + "output.LayerNorm")
        linear("cls.predictions.transform.dense", E, E, True)
        norm("cls.predictions.transform.LayerNorm")
        t["cls.predictions.bias"] = (V,)
    else:
        raise AssertionError(f"no tensor list for {family}")
    return t


def write_header_only(path: pathlib.Path, config: dict, shapes: dict[str, tuple[int, ...]]) -> int:
    """A checkpoint folder whose `model.safetensors` has the header of `shapes` and a sparse data hole."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    tag, itemsize = _DTYPES[config.get("torch_dtype")]
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)
    return offset


def shrink(config: dict) -> dict:
    """The same keys at toy sizes: 2 layers, E=32, 4 query / 2 KV heads of 16, F=48, V=64."""
    small = dict(config)
    text = small.get("text_config", small)
    sizes = {"hidden_size": 32, "n_embd": 32, "n_embed": 32, "num_attention_heads": 4, "n_head": 4,
             "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 48, "ffn_dim": 48, "vocab_size": 64,
             "word_embed_proj_dim": 32, "num_hidden_layers": 2, "n_layer": 2, "max_position_embeddings": 64,
             "n_positions": 64}
    gqa = text.get("num_key_value_heads", text.get("num_attention_heads")) != text.get("num_attention_heads")
    for key, value in sizes.items():
        if key in text and text[key] is not None:
            text[key] = value
    if not gqa and "num_key_value_heads" in text:
        text["num_key_value_heads"] = 4
    if text.get("n_inner") is not None:
        text["n_inner"] = 48
    if text.get("layer_types"):
        text["layer_types"] = text["layer_types"][:2]
    return small


def test_at_least_25_published_configs():
    assert len(PUBLISHED) >= 25


@pytest.mark.parametrize("name", PUBLISHED)
def test_inspect_header_only_checkpoint_at_full_size(name, tmp_path):
    config = _config(name)
    spec = parse_config(config)  # strict: every key is read, ignored as harmless, or refused
    nbytes = write_header_only(tmp_path / "ckpt", config, stored_tensors(spec))
    assert os.stat(tmp_path / "ckpt" / "model.safetensors").st_blocks * 512 < 1 << 20  # nothing on disk
    info = sx.inspect(tmp_path / "ckpt")
    text = config.get("text_config", config)
    expect = {
        "num_layers": text.get("num_hidden_layers", text.get("n_layer")),
        "num_heads": text.get("num_attention_heads", text.get("n_head")),
        "num_kv_heads": text.get("num_key_value_heads") or text.get("num_attention_heads", text.get("n_head")),
        "hidden_size": text.get("hidden_size", text.get("n_embd")),
        "vocab_size": text["vocab_size"],
        "tie_word_embeddings": config.get("tie_word_embeddings", True),
    }
    assert {k: info[k] for k in expect} == expect
    assert info["head_dim"] == (text.get("head_dim") or expect["hidden_size"] // expect["num_heads"])
    assert info["total_bytes"] == nbytes
    assert info["unknown_config_keys"] == []
    assert set(info["ignored_config_keys"]) < set(config)
    assert main(["inspect", str(tmp_path / "ckpt")]) == 0  # the command, without --allow-unknown-config


def write_shrunk(path: pathlib.Path, name: str) -> pathlib.Path:
    """A real (random-weight) checkpoint of the published config `name` at toy sizes."""
    config = shrink(_config(name))
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    shapes = stored_tensors(parse_config(config))
    save_file({n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("name", PUBLISHED)
def test_shrunk_checkpoint_converts_every_tensor(name, tmp_path):
    """What `analyze` reads: the strict spec and every layer and global tensor through the converter
    (none missing, none left over), with the ignored keys as summary.json records them."""
    model = sx.load(write_shrunk(tmp_path / "ckpt", name))
    config = _config(name)
    assert model.meta["not_converted"] == []
    assert model.meta["unknown_config_keys"] == []
    assert model.meta["ignored_config_keys"] == list(model.spec.to_dict()["ignored_keys"])
    assert model.params["lm_head"]["weight"].shape[0] == model.spec.vocab_size == 64
    assert model.spec.tie_word_embeddings == config.get("tie_word_embeddings", True)


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_analyze_runs_on_every_published_config_with_no_override(name, tmp_path):
    """`spectrax analyze` end to end (per-head laws and whole-matrix rank, few draws: the numbers of
    random weights do not matter here; no figures, whose drawing is the same for every config), strict,
    with the ignored keys recorded in summary.json."""
    checkpoint = write_shrunk(tmp_path / "ckpt", name)
    out = tmp_path / "out"
    argv = ["analyze", str(checkpoint), "--out", str(out), "--analyses", "laws,rank", "--null-draws", "2",
            "--shuffle-draws", "0", "--no-plots"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    spec = parse_config(_config(name))
    assert summary["spec"]["ignored_keys"] == list(spec.ignored_keys) and summary["spec"]["unknown_keys"] == []
    assert summary["layers"] == [0, 1] and summary["hub"] is None
    assert (out / "heads.csv").is_file() and (out / "matrices.csv").is_file() and not (out / "plots").exists()


def test_published_copies_match_the_hub_files_hashes():
    """Files whose Hub git blob id (the `blobId` of the Hub API, sha1 of `blob <size>\\0<bytes>`) was
    found published (README); a changed byte fails here."""
    blob_ids = {"Qwen--Qwen2.5-0.5B-Instruct": "0dbb161213629a23f0fc00ef286e6b1e366d180f"}
    for name, blob_id in blob_ids.items():
        data = (CONFIGS / f"{name}.json").read_bytes()
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob_id, name


def test_smollm2_ignored_and_read_keys():
    spec = parse_config(_config("HuggingFaceTB--SmolLM2-135M"))
    assert {"is_llama_config", "pretraining_tp", "bos_token_id"} <= set(spec.ignored_keys)
    assert "rope_interleaved" not in spec.ignored_keys  # read: a layout, false here
    spec = parse_config(_config("HuggingFaceTB--SmolLM2-1.7B-Instruct"))
    assert "transformers.js_config" in spec.ignored_keys
