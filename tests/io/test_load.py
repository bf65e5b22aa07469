"""Streaming yields exactly what `load` does, with memory that does not grow with depth."""

import gc
import importlib
import tracemalloc

import jax
import numpy as np
import pytest

import spectrax as sx
from spectrax.io.synthetic import write_llama_checkpoint
from tests.conftest import CHECKPOINTS


@pytest.mark.parametrize("name", ["llama_sharded", "gemma3_text", "gpt_neox_bf16", "bert"])
@pytest.mark.parametrize("block_size", [1, 2])
def test_stream_equals_load(name, block_size):
    model = sx.load(CHECKPOINTS / name)
    (group,) = model.params["layers"]
    seen = []
    for block in sx.stream_layers(CHECKPOINTS / name, block_size=block_size):
        assert 1 <= len(block.layer_ids) <= block_size
        for slot, layer in enumerate(block.layer_ids):
            jax.tree.map(lambda s, g: np.testing.assert_array_equal(s[slot], g[layer]),
                         block.params, {k: v for k, v in group.items() if k != "layer_ids"})
            seen.append(layer)
    assert seen == list(range(model.spec.num_layers))


@pytest.mark.parametrize("name", ["llama_sharded", "gpt_neox_bf16", "bert"])
def test_every_tensor_is_read_once(name, monkeypatch):
    """Loading reads each stored tensor exactly once (a membership test once read it too)."""
    reads = _reads(monkeypatch)
    source = sx.open_source(CHECKPOINTS / name)
    for _ in sx.stream_layers(source):
        pass
    importlib.import_module("spectrax.io.load").load_globals(source)
    assert len(reads) == len(set(reads)) > 0
    stored = {i.name for layer in source.layout.layers for i in layer.values()}
    stored |= {i.name for i in source.layout.globals.values()}
    assert set(reads) <= stored


def test_stream_selected_layers():
    ids = [block.layer_ids for block in sx.stream_layers(CHECKPOINTS / "gemma3_text", layers=[0, 2], block_size=4)]
    assert ids == [(0,), (2,)]  # not consecutive: never stacked together
    with pytest.raises(ValueError, match="out of range"):
        list(sx.stream_layers(CHECKPOINTS / "gemma3_text", layers=[3]))


def test_load_groups_layers_and_records_metadata():
    model = sx.load(CHECKPOINTS / "gemma3_text")
    (group,) = model.params["layers"]
    np.testing.assert_array_equal(group["layer_ids"], [0, 1, 2])
    assert group["attn"]["q"].shape == (3, 4, 24, 64)
    assert model.meta["layer_groups"] == [[0, 1, 2]]
    assert model.spec.layer_types == ("sliding_attention", "sliding_attention", "full_attention")


def _streaming_peak(path) -> int:
    gc.collect()
    tracemalloc.start()
    total = 0.0
    for block in sx.stream_layers(path):
        total += float(np.asarray(block.params["attn"]["q"], np.float32).sum())
        del block
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_streaming_peak_memory_does_not_grow_with_layers(tmp_path):
    shape = dict(hidden_size=256, num_heads=8, num_kv_heads=2, intermediate_size=512, vocab_size=64)
    shallow = write_llama_checkpoint(tmp_path / "l2", num_layers=2, layers_per_shard=1, **shape)
    deep = write_llama_checkpoint(tmp_path / "l12", num_layers=12, layers_per_shard=1, **shape)
    layer_bytes = 4 * (2 * 256 * 256 + 2 * 64 * 256 + 3 * 256 * 512 + 2 * 256)
    peak_shallow, peak_deep = _streaming_peak(shallow), _streaming_peak(deep)
    # Held at once: one layer as read, its stacked copy, and a float32 view of q.
    assert peak_deep < 2.5 * layer_bytes
    assert peak_deep < 1.15 * peak_shallow
    # Whole-model loading, by contrast, holds every layer.
    tracemalloc.start()
    sx.load(deep)
    _, peak_load = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak_load > 10 * layer_bytes


@pytest.mark.parametrize("name", ["llama_bf16", "gemma3_text", "gpt2"])
def test_load_to_device_equals_host_load(name):
    """`device=True` gives jax arrays with the same values and dtypes, and the same logits."""
    from spectrax.models import forward

    host = sx.load(CHECKPOINTS / name)
    dev = sx.load(CHECKPOINTS / name, device=True)
    flat_host, tree_host = jax.tree.flatten(host.params)
    flat_dev, tree_dev = jax.tree.flatten(dev.params)
    assert tree_host == tree_dev
    for a, b in zip(flat_host, flat_dev):
        if a.dtype == np.int32:  # layer_ids stay host ints: they fix the layer order
            np.testing.assert_array_equal(a, b)
            continue
        assert isinstance(b, jax.Array) and b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_array_equal(np.asarray(b), a)
    ids = np.array([[1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(np.asarray(forward(dev.params, dev.spec, ids)),
                                  np.asarray(forward(host.params, host.spec, ids)))


def test_layer_is_layer_i_whatever_the_grouping():
    """`io.layer(params, i)` is what `stream_layers` yields for layer i, also when groups interleave
    (a group's layers need not be consecutive), counts from the end like a list, and names the range."""
    model = sx.load(CHECKPOINTS / "gemma3_text")
    streamed = {b.layer_ids[0]: jax.tree.map(lambda x: x[0], b.params) for b in sx.stream_layers(CHECKPOINTS / "gemma3_text")}
    (group,) = model.params["layers"]

    def pick(slots):
        sub = jax.tree.map(lambda a: a[np.asarray(slots)], {k: v for k, v in group.items() if k != "layer_ids"})
        return {"layer_ids": np.asarray(slots, np.int32), **sub}

    interleaved = {**model.params, "layers": (pick([1]), pick([0, 2]))}
    for params in (model.params, interleaved):
        for i in range(3):
            got = sx.io.layer(params, i)
            assert set(got) == {"attn", "mlp", "norms"}
            jax.tree.map(np.testing.assert_array_equal, got, streamed[i])
    assert sx.io.layer(model.params, 0)["attn"]["q"].shape == (4, 24, 64)      # (H, D, E)
    assert np.shares_memory(sx.io.layer(model.params, 1)["attn"]["q"], group["attn"]["q"])  # a view
    jax.tree.map(np.testing.assert_array_equal, model.layer(-1), streamed[2])
    jax.tree.map(np.testing.assert_array_equal, sx.io.layer(interleaved, -3), streamed[0])
    for bad in (3, -4):
        with pytest.raises(IndexError, match=f"layer {bad} out of range for a 3-layer model"):
            model.layer(bad)


def test_layer_of_device_weights():
    model = sx.load(CHECKPOINTS / "llama", device=True)
    q = model.layer(1)["attn"]["q"]
    assert isinstance(q, jax.Array)
    np.testing.assert_array_equal(q, model.params["layers"][0]["attn"]["q"][1])


def _reads(monkeypatch) -> list[str]:
    """The stored names `read_tensor` is asked for from now on."""
    load_module = importlib.import_module("spectrax.io.load")  # the package exports load()
    reads: list[str] = []
    real = load_module.read_tensor
    monkeypatch.setattr(load_module, "read_tensor", lambda info: reads.append(info.name) or real(info))
    return reads


@pytest.mark.parametrize("name", ["llama_sharded", "phi3", "gpt2", "gpt_neox_bf16", "bert", "olmo2", "opt"])
def test_streaming_some_parts_reads_only_their_tensors(name, monkeypatch):
    """Each part is read alone from the tensors it is made from: the three reads split the stored
    tensors (a fused qkv or gate_up goes with its part), and the part equals a whole read's."""
    source = sx.open_source(CHECKPOINTS / name)
    (whole,) = sx.stream_layers(source, layers=[1])
    reads = _reads(monkeypatch)
    read_by_part = {}
    for part in sx.io.LAYER_PARTS:
        reads.clear()
        (block,) = sx.stream_layers(source, layers=[1], parts=[part])
        assert list(block.params) == [part]
        jax.tree.map(np.testing.assert_array_equal, block.params[part], whole.params[part])
        read_by_part[part] = set(reads)
        assert len(reads) == len(set(reads))
    stored = {info.name for info in source.layout.layers[1].values()}
    assert set.union(*read_by_part.values()) == stored
    assert sum(map(len, read_by_part.values())) == len(stored)  # no tensor read for two parts
    assert read_by_part["mlp"] and all(".mlp." in n or "intermediate" in n or ".output.dense" in n or ".fc" in n
                                       for n in read_by_part["mlp"])
    assert not any("mlp" in n or ".fc" in n for n in read_by_part["attn"])


def test_unknown_parts_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"unknown layer parts \['ffn'\].*attn, mlp, norms"):
        list(sx.stream_layers(CHECKPOINTS / "llama", parts=["attn", "ffn"]))
