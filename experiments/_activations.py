"""Inputs shared by the activation scripts: a checkpoint, token ids, and a next-token loss.

Tokenization is out of scope: ids come from a `.npy` file of shape `(N, T)` or are drawn uniformly
from the vocabulary with a seed (the default on the embedded tiny model, whose copy task makes any
sequence a meaningful input).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import spectrax as sx
from spectrax.data import TINY_LLAMA
from spectrax.models import apply_norm, decoder_options

__all__ = ["add_input_options", "attention_inputs", "layer_params", "load_inputs", "next_token_loss"]


def add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", default=str(TINY_LLAMA),
                        help="checkpoint folder (default: the embedded tiny llama)")
    parser.add_argument("--ids", default=None, help="token ids, a .npy file of shape (N, T) (default: random)")
    parser.add_argument("--batch", type=int, default=32, help="random sequences when --ids is not given")
    parser.add_argument("--length", type=int, default=32, help="tokens per random sequence")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random ids and of the nulls")


def load_inputs(args: argparse.Namespace) -> tuple[sx.Model, np.ndarray]:
    """The loaded model and `(N, T)` int32 token ids inside its vocabulary."""
    model = sx.load(args.checkpoint)
    if args.ids:
        ids = np.load(args.ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{args.ids}: expected integer token ids of shape (N, T), got {ids.dtype} {ids.shape}")
    else:
        if args.batch < 1 or args.length < 2:
            raise ValueError("--batch must be >= 1 and --length >= 2")
        ids = np.random.default_rng(args.seed).integers(0, model.spec.vocab_size, (args.batch, args.length))
    if ids.min() < 0 or ids.max() >= model.spec.vocab_size:
        raise ValueError(f"token ids must lie in [0, {model.spec.vocab_size}) for this model")
    return model, ids.astype(np.int32)


def next_token_loss(ids: np.ndarray):
    """Mean next-token cross-entropy of `(B, T, V)` logits on `ids`."""
    targets = jnp.asarray(ids[:, 1:])

    def loss(logits):
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    return loss


def layer_params(model: sx.Model, layer: int) -> dict:
    """Layer `layer`'s canonical parameters (leaves without the layer axis, host numpy)."""
    for group in model.params["layers"]:
        ids = [int(i) for i in np.asarray(group["layer_ids"])]
        if layer in ids:
            slot = ids.index(layer)
            return jax.tree.map(lambda a: np.asarray(a)[slot], {k: v for k, v in group.items() if k != "layer_ids"})
    raise ValueError(f"no layer {layer} in this model")


def attention_inputs(model: sx.Model, hidden: jax.Array, layer: int) -> tuple[np.ndarray, dict]:
    """`(B, T, E)` normed residual stream entering `layer`'s attention, and that layer's params."""
    params = layer_params(model, layer)
    x = hidden[layer]
    if "attn_norm" in params["norms"]:
        x = apply_norm(x, params["norms"]["attn_norm"], decoder_options(model.spec))
    return np.asarray(x, np.float32), params
