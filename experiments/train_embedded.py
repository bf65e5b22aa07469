"""Train a tiny llama on a copy task with spectrax's own forward pass, then ship it as a HF checkpoint.

    python experiments/train_embedded.py                 # writes spectrax/data/tiny-llama/
    python experiments/train_embedded.py --out /tmp/tl --steps 300

Task (vocab 64): `[BOS, x_1..x_N, SEP, x_1..x_N]` with BOS=0, SEP=1 and `x_i` drawn uniformly
from the content tokens 2..63, N=16 (T=34). The loss is the next-token cross-entropy on the
copied half only (predicting `x_1..x_N` from SEP onwards), which no model can lower without
attending back N positions; on the first half the best possible loss is ln(62).
Model: E=64, L=4, H=4, KV=2 (GQA), D=16, F=128, untied head; optax AdamW with warmup + cosine
decay and gradient clipping; an explicit `jax.value_and_grad` step under `jax.jit`.

The trained weights are written in bf16 as `config.json` + `model.safetensors` with the tensor
names and config fields of transformers 5 (`LlamaForCausalLM`), plus `TRAINING.md`; the script
then reloads the folder with `spectrax.load` and reports the reloaded model's loss.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import spectrax as sx  # noqa: E402
from spectrax.io.config import parse_config  # noqa: E402
from spectrax.models import forward, init_llama, merge_layer_ids, save_hf_checkpoint, split_layer_ids  # noqa: E402

DEFAULT_OUT = REPO / "spectrax" / "data" / "tiny-llama"

VOCAB, BOS, SEP, FIRST_CONTENT = 64, 0, 1, 2
COPY_LENGTH = 16

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": BOS,
    "eos_token_id": None,
    "pad_token_id": None,
    "dtype": "bfloat16",
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 64,
    "mlp_bias": False,
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": False,
    "use_cache": True,
    "vocab_size": VOCAB,
}


def copy_batch(key: jax.Array, batch: int, n: int = COPY_LENGTH) -> jax.Array:
    """`(batch, 2n+2)` int32 sequences `[BOS, x, SEP, x]`, `x` uniform over tokens 2..VOCAB-1."""
    x = jax.random.randint(key, (batch, n), FIRST_CONTENT, VOCAB, dtype=jnp.int32)
    bos = jnp.full((batch, 1), BOS, jnp.int32)
    sep = jnp.full((batch, 1), SEP, jnp.int32)
    return jnp.concatenate([bos, x, sep, x], axis=1)


def copy_loss(logits: jax.Array, ids: jax.Array, n: int = COPY_LENGTH) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy of predicting the copied half `ids[:, n+2:]` from `logits[:, n+1:-1]`."""
    pred, target = logits[:, n + 1:-1], ids[:, n + 2:]
    loss = optax.softmax_cross_entropy_with_integer_labels(pred, target).mean()
    acc = (jnp.argmax(pred, axis=-1) == target).astype(jnp.float32).mean()
    return loss, acc


def train(args) -> dict:
    spec = parse_config(CONFIG)
    params = init_llama(jax.random.key(args.seed), spec)
    weights, layer_ids = split_layer_ids(params)
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.warmup, args.steps, args.lr * 0.05)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=args.weight_decay))
    opt_state = opt.init(weights)

    def loss_fn(w, ids):
        return copy_loss(forward(merge_layer_ids(w, layer_ids), spec, ids), ids)

    @jax.jit
    def step(w, state, key):
        ids = copy_batch(key, args.batch)
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(w, ids)
        updates, state = opt.update(grads, state, w)
        return optax.apply_updates(w, updates), state, loss, acc

    eval_ids = copy_batch(jax.random.key(args.seed + 1_000_000), 1024)  # held out: a key training never uses
    eval_fn = jax.jit(loss_fn)
    data_key = jax.random.key(args.seed + 1)
    curve = []
    start = time.perf_counter()
    for i in range(args.steps + 1):
        if i % args.log_every == 0 or i == args.steps:
            loss, acc = (float(v) for v in eval_fn(weights, eval_ids))
            curve.append((i, loss, acc, time.perf_counter() - start))
            print(f"step {i:5d}  held-out copy loss {loss:.4f}  acc {acc:.3f}  {curve[-1][3]:6.1f}s", flush=True)
        if i == args.steps:
            break
        weights, opt_state, _, _ = step(weights, opt_state, jax.random.fold_in(data_key, i))
    seconds = time.perf_counter() - start
    return {"spec": spec, "params": merge_layer_ids(jax.device_get(weights), layer_ids), "curve": curve,
            "seconds": seconds, "eval_ids": np.asarray(eval_ids)}


def training_md(args, result, reloaded_loss: float, reloaded_acc: float) -> str:
    uniform = math.log(VOCAB)
    rows = "\n".join(f"| {s} | {l:.4f} | {a:.3f} | {t:.1f} |" for s, l, a, t in result["curve"])
    final_step, final_loss, final_acc, _ = result["curve"][-1]
    return f"""# tiny-llama: training record

Written by `experiments/train_embedded.py` (spectrax's own JAX forward pass, no torch).
Reproduce: `python experiments/train_embedded.py --force{'' if args.out == str(DEFAULT_OUT) else ' --out ' + args.out}`
(seed {args.seed}, steps {args.steps}, batch {args.batch}).

## Task

Copy task, vocab {VOCAB}: each sequence is `[BOS, x_1..x_{COPY_LENGTH}, SEP, x_1..x_{COPY_LENGTH}]` (length
{2 * COPY_LENGTH + 2}) with BOS = {BOS}, SEP = {SEP}, and `x_i` i.i.d. uniform over tokens
{FIRST_CONTENT}..{VOCAB - 1}. Loss: mean next-token cross-entropy over the copied half only, i.e.
logits at positions {COPY_LENGTH + 1}..{2 * COPY_LENGTH} (SEP and the first {COPY_LENGTH - 1} copies) against
tokens at positions {COPY_LENGTH + 2}..{2 * COPY_LENGTH + 1}. Solving it needs attention to the token
{COPY_LENGTH} positions back (or to the successor of the previous occurrence of the current token).

## Model

llama: hidden 64, 4 layers, 4 query heads, 2 KV heads (GQA), head_dim 16, MLP 128 (SiLU gated),
RMSNorm eps 1e-6, RoPE theta 10000, untied head, {sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(split_layer_ids(result['params'])[0]))} parameters.
Init N(0, 0.02), norm gains 1. Stored in bfloat16 (`model.safetensors`, HF tensor names).

## Optimization

optax: clip_by_global_norm(1.0) then AdamW (weight decay {args.weight_decay}), learning rate
warmup 0 -> {args.lr} over {args.warmup} steps then cosine decay to {args.lr * 0.05:g} at step {args.steps};
batch {args.batch} fresh sequences per step (key `fold_in(key(seed + 1), step)`), seed {args.seed}
(init key `key(seed)`). Held-out set: 1024 sequences from `key(seed + 1000000)`.

## Result

- Uniform baseline: ln({VOCAB}) = {uniform:.4f} (ln({VOCAB - FIRST_CONTENT}) = {math.log(VOCAB - FIRST_CONTENT):.4f} knowing the content tokens).
- Final held-out copy loss (float32 weights, step {final_step}): **{final_loss:.4f}**, accuracy {final_acc:.4f}.
- Reloaded from this folder with `spectrax.load` (bf16 weights): loss **{reloaded_loss:.4f}**, accuracy {reloaded_acc:.4f}.
- Training time: {result['seconds']:.1f} s on {platform.machine()} CPU ({os.cpu_count()} cores), jax {jax.__version__}.

| step | held-out copy loss | accuracy | seconds |
|---:|---:|---:|---:|
{rows}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="checkpoint folder to write (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not args.force:
        print(f"{args.out} exists; pass --force to replace it", file=sys.stderr)
        return 1

    result = train(args)
    spec, params = result["spec"], result["params"]
    # The reloaded (bf16) model's loss goes into TRAINING.md, so write it once to a scratch folder.
    with tempfile.TemporaryDirectory() as scratch:
        save_hf_checkpoint(os.path.join(scratch, "model"), params, spec, dtype=ml_dtypes.bfloat16, config=CONFIG)
        model = sx.load(os.path.join(scratch, "model"))
        ids = result["eval_ids"]
        loss, acc = (float(v) for v in copy_loss(forward(model.params, model.spec, ids), jnp.asarray(ids)))
    text = training_md(args, result, loss, acc)
    save_hf_checkpoint(args.out, params, spec, dtype=ml_dtypes.bfloat16, config=CONFIG,
                       extra_files={"TRAINING.md": text}, force=True)
    print(f"reloaded {args.out}: copy loss {loss:.4f} acc {acc:.4f} (uniform {math.log(VOCAB):.4f}); "
          f"trained in {result['seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
