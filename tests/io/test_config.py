"""Config parsing reads each family's spelling of the same fields."""

import json

import pytest

from spectrax.io import ConfigError, parse_config
from tests.conftest import CHECKPOINTS, REFERENCES, fixture_names

import numpy as np


@pytest.mark.parametrize("name", fixture_names())
def test_spec_matches_reference_shapes(name):
    config = json.loads((CHECKPOINTS / name / "config.json").read_text())
    spec = parse_config(config)
    ref = np.load(REFERENCES / f"{name}.npz")
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.hidden_size) == tuple(
        int(ref[k]) for k in ("num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size"))
    assert spec.num_heads % spec.num_kv_heads == 0


def test_head_dim_is_read_not_assumed():
    config = json.loads((CHECKPOINTS / "qwen3" / "config.json").read_text())
    spec = parse_config(config)
    assert spec.head_dim == 24 != spec.hidden_size // spec.num_heads


def test_gemma_norm_offset_and_qk_norm_kinds():
    spec = lambda n: parse_config(json.loads((CHECKPOINTS / n / "config.json").read_text()))
    assert spec("gemma").norm_offset == 1.0 and spec("llama").norm_offset == 0.0
    assert (spec("qwen3").qk_norm, spec("olmo2").qk_norm, spec("llama").qk_norm) == ("head", "projection", None)


@pytest.mark.parametrize("bad,match", [
    ({"num_attention_heads": 3}, "not a multiple of num_key_value_heads"),
    ({"num_hidden_layers": 0}, "'num_hidden_layers' must be an integer from 1 to 65536, got 0"),
    ({"head_dim": "24"}, "'head_dim' must be a positive integer, got '24'"),
    ({"layer_types": ["full_attention"]}, "layer_types has 1 entries for 2 layers"),
    ({"pruned_heads": {"0": [1]}}, "pruned attention heads"),
])
def test_inconsistent_configs_name_the_field(bad, match):
    config = {**json.loads((CHECKPOINTS / "qwen3" / "config.json").read_text()), **bad}
    with pytest.raises(ConfigError, match=match):
        parse_config(config, source="x/config.json")
