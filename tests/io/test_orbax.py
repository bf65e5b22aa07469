"""Converted pytrees round-trip through orbax, restored against an abstract target."""

import jax
import numpy as np
import pytest

import spectrax as sx
from spectrax.io import abstract_like
from tests.conftest import CHECKPOINTS


@pytest.mark.parametrize("name", ["qwen3_bf16", "gpt2"])
def test_save_restore_round_trip(tmp_path, name):
    model = sx.load(CHECKPOINTS / name)
    target = tmp_path / "saved"
    written = sx.save_params(target, model.params, meta=model.meta)
    assert written == str(target.resolve())
    restored, meta = sx.restore_params(str(target), abstract_like(model.params))
    assert meta["model_type"] == model.spec.model_type
    assert jax.tree.structure(restored) == jax.tree.structure(model.params)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(model.params)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_save_refuses_existing_directory(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        sx.save_params(tmp_path / "exists", {"w": np.zeros(3)})
