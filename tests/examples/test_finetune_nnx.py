"""examples/finetune_nnx.py: a few GaLore steps on the NNX decoder lower the held-out loss, and the
fine-tuned checkpoint it saves loads back as the weights it trained."""

import importlib.util
import pathlib
import re

import jax
import numpy as np
import pytest

import spectrax as sx

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "finetune_nnx.py"


def _example():
    spec = importlib.util.spec_from_file_location("finetune_nnx", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_three_steps_lower_the_loss_and_the_saved_checkpoint_loads(tmp_path, capsys):
    example = _example()
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam raises a float to the int32 count
        decoder, losses = example.finetune(3)  # as main runs it: same seed, same batches
        assert example.main(["--steps", "3", "--out", str(tmp_path / "tuned")]) == 0
    assert losses["successor_after"] < losses["successor_before"] - 1.0
    assert losses["copy_before"] < 0.05  # the shipped model copies; its successor loss starts high
    printed = re.search(r"successor loss ([\d.]+) -> ([\d.]+) after 3 steps", capsys.readouterr().out)
    assert printed and float(printed[2]) < float(printed[1])
    tuned, shipped = sx.load(tmp_path / "tuned"), sx.load(sx.data.TINY_LLAMA)
    np.testing.assert_array_equal(tuned.params["layers"][0]["attn"]["q"],
                                  np.asarray(decoder.model.params["layers"][0]["attn"]["q"].get_value()))
    assert not np.allclose(tuned.params["layers"][0]["attn"]["q"],
                           np.asarray(shipped.params["layers"][0]["attn"]["q"], np.float32))
