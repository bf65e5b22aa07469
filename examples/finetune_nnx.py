"""Fine-tune a loaded checkpoint as a Flax NNX module with optax and GaLore.

The shipped tiny-llama (`spectrax.data.TINY_LLAMA`, trained to copy a sequence: `[BOS, x_1..x_16,
SEP, x_1..x_16]`) is taught to answer with each token's successor instead (`[BOS, x_1..x_16, SEP,
s(x_1)..s(x_16)]`, s(x) = x + 1 over the content tokens 2..63, 63 wrapping to 2), with the loss
on the second half only, as in its training: the attention that finds the token to copy is kept,
the map from the copied token to the output changes. The checkpoint is loaded with `spectrax.load`,
cast to float32 (`Model` is a pytree), wrapped by `spectrax.models.nnx.Decoder` without a copy,
and trained by `nnx.Optimizer` with `spectrax.optim.galore`: as in the GaLore paper, the hidden
matrices (each attention head's `(D, E)` q/k/v/o matrices and each layer's MLP matrices, stacked
over layers in the canonical tree) get Adam in a rank-`r` projection of their gradient, while
embeddings, the output head and the norm gains get full-size Adam.

    python examples/finetune_nnx.py [--steps 60] [--rank 4] [--lr 0.01] [--out DIR]

Prints the held-out successor loss (and the copy loss, which fine-tuning trades away) before
and after; with `--out`, saves the fine-tuned weights as a safetensors checkpoint spectrax (or
transformers) loads again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import spectrax as sx
from spectrax.models import save_hf_checkpoint
from spectrax.models.nnx import Decoder
from spectrax.optim import galore

N = 16  # content tokens per sequence
HIDDEN_MATRICES = ("q", "k", "v", "o", "gate", "up", "down")


def batch(rng: np.random.Generator, size: int, *, successor: bool = True, vocab: int = 64) -> np.ndarray:
    """`(size, 2N + 2)` sequences `[BOS=0, x_1..x_N, SEP=1, answer]`, x uniform over 2..vocab-1; the
    answer is each x's successor in 2..vocab-1 (or x itself, `successor=False`)."""
    x = rng.integers(2, vocab, size=(size, N))
    answer = 2 + (x - 1) % (vocab - 2) if successor else x
    return np.concatenate([np.zeros((size, 1), int), x, np.ones((size, 1), int), answer], axis=1)


def loss(decoder: Decoder, ids: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy on the answer: logits at SEP and the first N-1 answer tokens."""
    logits = decoder(ids)[:, N + 1:-1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, N + 2:]).mean()


def optimizer(decoder: Decoder, *, learning_rate: float, rank: int) -> nnx.Optimizer:
    """GaLore(Adam) on the stacked hidden matrices (leaves `(n, H, D, E)` and `(n, F, E)`: one
    projector per head or layer matrix), full-size Adam on everything else."""

    def hidden(state):
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: np.ndim(leaf) >= 3 and any(getattr(k, "key", None) in HIDDEN_MATRICES for k in path),
            state)

    base = optax.adam(learning_rate)
    return nnx.Optimizer(decoder, galore(rank, base=base, update_proj_gap=50, scale=1.0, mask=hidden), wrt=nnx.Param)


@nnx.jit
def train_step(decoder: Decoder, opt: nnx.Optimizer, ids: jax.Array) -> jax.Array:
    value, grads = nnx.value_and_grad(loss)(decoder, ids)
    opt.update(decoder, grads)
    return value


def finetune(steps: int, *, rank: int = 4, learning_rate: float = 0.01, batch_size: int = 32,
             seed: int = 0) -> tuple[Decoder, dict[str, float]]:
    """Load the shipped tiny-llama, train `steps` steps on fresh successor batches; return the decoder
    and the held-out losses before and after (`successor_before`, `successor_after`, `copy_before`,
    `copy_after`, on 256 sequences)."""
    model = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), sx.load(sx.data.TINY_LLAMA))
    decoder = Decoder(model)
    opt = optimizer(decoder, learning_rate=learning_rate, rank=rank)
    held_out = np.random.default_rng(seed + 1_000_000)
    successor, copy = batch(held_out, 256), batch(held_out, 256, successor=False)
    losses = {"successor_before": float(loss(decoder, successor)), "copy_before": float(loss(decoder, copy))}
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        train_step(decoder, opt, batch(rng, batch_size))
    losses |= {"successor_after": float(loss(decoder, successor)), "copy_after": float(loss(decoder, copy))}
    return decoder, losses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rank", type=int, default=4, help="GaLore rank of each projected matrix")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--out", help="save the fine-tuned checkpoint (safetensors + config.json) here")
    args = parser.parse_args(argv)
    decoder, losses = finetune(args.steps, rank=args.rank, learning_rate=args.lr)
    print(f"successor loss {losses['successor_before']:.3f} -> {losses['successor_after']:.3f} after {args.steps} steps; "
          f"copy loss {losses['copy_before']:.3f} -> {losses['copy_after']:.3f}")
    if args.out:
        model = decoder.arrays()
        save_hf_checkpoint(args.out, model.params, model.spec)
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sx.configure_cpu()
    sys.exit(main())
