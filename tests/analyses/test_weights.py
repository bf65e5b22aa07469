"""Every stored 2-D weight is either among the analyzed matrices or listed as skipped, with a reason."""

from pathlib import Path

import jax
import numpy as np

from spectrax.analyses.weights import global_matrices, layer_matrices, skipped_matrices, skipped_table
from spectrax.io.load import open_source, stream_layers

CHECKPOINTS = Path(__file__).parents[1] / "fixtures" / "checkpoints"


def _layer0(source):
    block = next(stream_layers(source, layers=[0]))
    return dict(layer_matrices(jax.tree.map(lambda x: x[0], block.params)))


def test_global_matrices_hold_every_2d_weight_outside_the_layers():
    bert = open_source(CHECKPOINTS / "bert")
    matrices = global_matrices(bert)
    assert {k: v.shape for k, v in matrices.items()} == {
        "embed.tokens": (128, 64), "embed.positions": (64, 64), "embed.token_types": (2, 64),
        "lm_head.transform": (64, 64)}
    assert skipped_matrices(bert, None, matrices) == {"lm_head.weight": "tied: the same matrix as embed.tokens"}
    llama = open_source(CHECKPOINTS / "llama")
    untied = global_matrices(llama)
    assert set(untied) == {"embed.tokens", "lm_head"} and skipped_matrices(llama, None, untied) == {}


def test_fused_projections_and_other_towers_are_listed():
    for name, fused in (("gpt2", "transformer.h.0.attn.c_attn.weight"),
                        ("phi3", "model.layers.0.self_attn.qkv_proj.weight")):
        source = open_source(CHECKPOINTS / name)
        skipped = skipped_matrices(source, 0, _layer0(source))
        assert "fused" in skipped[fused], skipped
    phi3 = open_source(CHECKPOINTS / "phi3")
    assert set(skipped_matrices(phi3, 0, _layer0(phi3))) == {"model.layers.0.self_attn.qkv_proj.weight",
                                                              "model.layers.0.mlp.gate_up_proj.weight"}
    llama = open_source(CHECKPOINTS / "llama")
    assert skipped_matrices(llama, 0, _layer0(llama)) == {}
    # A layer matrix the caller did not analyze (say, cropped away) is listed too.
    partial = {k: v for k, v in _layer0(llama).items() if k != "mlp.down"}
    assert list(skipped_matrices(llama, 0, partial)) == ["model.layers.0.mlp.down_proj.weight"]
    multimodal = open_source(CHECKPOINTS / "gemma3_multimodal")
    skipped = skipped_matrices(multimodal, None, global_matrices(multimodal))
    assert "not converted" in skipped["multi_modal_projector.mm_input_projection_weight"]
    assert any(k.startswith("vision_tower.") and "tower" in v for k, v in skipped.items())
    assert all(np.ndim(v) == 2 for v in global_matrices(multimodal).values())


def test_skipped_table_lists_each_layer_with_shapes_from_a_run_table():
    phi3 = open_source(CHECKPOINTS / "phi3")
    rows = []
    for layer, matrices in ((-1, global_matrices(phi3)), (0, _layer0(phi3))):
        rows += [(layer, name, *w.shape) for name, w in matrices.items()]
    table = {c: np.array([r[i] for r in rows], dtype=object if c == "matrix" else int)
             for i, c in enumerate(("layer", "matrix", "rows", "cols"))}
    skipped = skipped_table(phi3, table)
    assert list(skipped) == ["matrix", "shape", "reason"]
    fused = list(skipped["matrix"]).index("model.layers.0.self_attn.qkv_proj.weight")
    assert "fused" in skipped["reason"][fused] and skipped["shape"][fused].count(" x ") == 1
    assert len(skipped["matrix"]) == len(skipped_matrices(phi3, None, global_matrices(phi3))) + 2
