"""spectrax's default `analyze` against WeightWatcher's `analyze(mp_fit=True, randomize=True)` on one BERT.

The model has MiniLM-L6's shapes (`--shape minilm`: vocab 30522, hidden 384, 6 layers, 12 heads,
intermediate 1536, 512 positions, 2 token types; 22.7M parameters) with BERT's random
initialization (weights N(0, 0.02), the padding token's embedding row zero, biases 0, LayerNorm
1): no weights are downloaded, so it is not a trained model, and spectra of trained weights (heavy
tails, spikes) may cost the tail fits a little more or less. It is written as safetensors plus
config.json, named as `transformers`' `BertModel.save_pretrained` names them (`write_bert_checkpoint`;
`--checkpoint DIR` reuses a folder, e.g. one written by `transformers` itself).

Rows (each a fresh process, timed from its start to its end):
- `spectrax cold`: `python -m spectrax analyze CKPT --out NEW` (default analyses, draws and figures)
  with `SPECTRAX_CACHE_DIR` an empty folder: every program compiled by XLA;
- `spectrax warm`: the same command again on that cache folder;
- `weightwatcher`: in the Python given by `--ww-python` (default /work/wwvenv/bin/python, a venv with
  torch, transformers and weightwatcher; never the project's), `BertModel.from_pretrained(CKPT)` and
  `WeightWatcher(model).analyze(mp_fit=True, randomize=True)`: its power-law and MP fits plus one
  entry-randomized copy of each matrix. Skipped, with a message, when that Python or weightwatcher is
  missing. `analyze_s` is the `analyze` call alone.

`--xla quick` runs the spectrax rows with `XLA_FLAGS=--xla_backend_optimization_level=0
--xla_cpu_use_fusion_emitters=false` (XLA's quick settings for small programs; `--xla default quick`
runs both). Every row reports wall and CPU seconds (user + system of the process and its children) and
the 1-minute load average before and after: on a shared machine the CPU seconds are the steadier figure.

    python benchmarks/bench_weightwatcher.py [--shape minilm|tiny] [--xla default quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

__all__ = ["QUICK_XLA_FLAGS", "SHAPES", "main", "spectrax_rows", "weightwatcher_row", "write_bert_checkpoint"]

SHAPES = {
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2),
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=64, type_vocab_size=2),
}
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
WW_PYTHON = "/work/wwvenv/bin/python"

_WW_CHILD = r"""
import json, logging, sys, time, warnings
warnings.filterwarnings("ignore")
import torch, transformers, weightwatcher
logging.getLogger("weightwatcher").setLevel(logging.ERROR)
torch.manual_seed(0)
model, info = transformers.BertModel.from_pretrained(sys.argv[1], dtype=torch.float32, output_loading_info=True)
missing = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
if missing:
    sys.exit(f"checkpoint does not match BertModel: {missing}")
started = time.perf_counter()
details = weightwatcher.WeightWatcher(model=model.eval()).analyze(mp_fit=True, randomize=True)
print(json.dumps({"analyze_s": time.perf_counter() - started, "matrices": len(details),
                  "weightwatcher": weightwatcher.__version__, "torch": torch.__version__}))
"""


def write_bert_checkpoint(path: str, *, seed: int = 0, initializer_range: float = 0.02, **shape: int) -> str:
    """A randomly initialized BERT encoder (`BertModel`: embeddings, layers, pooler) at `path`: float32
    `model.safetensors` and `config.json`, tensor names and initialization as `transformers` gives them.
    `shape`: `SHAPES["minilm"]`'s keys. Returns `path`."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    E, F, V = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]

    def normal(*dims):
        return (rng.standard_normal(dims, np.float32) * np.float32(initializer_range))

    def dense(name, out_dim, in_dim):
        return {f"{name}.weight": normal(out_dim, in_dim), f"{name}.bias": np.zeros(out_dim, np.float32)}

    def norm(name):
        return {f"{name}.weight": np.ones(E, np.float32), f"{name}.bias": np.zeros(E, np.float32)}

    words = normal(V, E)
    words[0] = 0.0  # pad_token_id 0: its row is zeroed at initialization
    tensors = {"embeddings.word_embeddings.weight": words,
               "embeddings.position_embeddings.weight": normal(shape["max_position_embeddings"], E),
               "embeddings.token_type_embeddings.weight": normal(shape["type_vocab_size"], E),
               **norm("embeddings.LayerNorm"), **dense("pooler.dense", E, E)}
    for i in range(shape["num_hidden_layers"]):
        layer = f"encoder.layer.{i}"
        for part in ("query", "key", "value"):
            tensors.update(dense(f"{layer}.attention.self.{part}", E, E))
        tensors.update({**dense(f"{layer}.attention.output.dense", E, E), **norm(f"{layer}.attention.output.LayerNorm"),
                        **dense(f"{layer}.intermediate.dense", F, E), **dense(f"{layer}.output.dense", E, F),
                        **norm(f"{layer}.output.LayerNorm")})
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["BertModel"], "model_type": "bert", **shape, "hidden_act": "gelu",
              "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": initializer_range,
              "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute"}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return path


def _timed(command: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `command` to its end: wall and CPU seconds (the children's user + system), load before and
    after, and its last stdout line."""
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... exited {out.returncode}: {out.stderr.strip()[-2000:]}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    lines = out.stdout.strip().splitlines()
    return {"wall_s": wall, "cpu_s": cpu, "load_before": load_before, "load_after": os.getloadavg()[0],
            "last_line": lines[-1] if lines else ""}


def spectrax_rows(checkpoint: str, scratch: str, *, xla: str = "default", runs=("cold", "warm"),
                  extra_args: tuple[str, ...] = ()) -> list[dict]:
    """`spectrax analyze` on `checkpoint` in fresh processes: `runs` in order against one compilation
    cache folder, empty before the first (`cold`: all compiled; `warm`: read back). `xla`: `default`
    or `quick` (`QUICK_XLA_FLAGS`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    cache = tempfile.mkdtemp(prefix=f"cache-{xla}-", dir=scratch)
    env.update(SPECTRAX_CACHE_DIR=cache, SPECTRAX_COMPILE_CACHE="1")
    if xla == "quick":
        env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), QUICK_XLA_FLAGS]).strip()
    rows = []
    for run in runs:
        out = os.path.join(scratch, f"out-{xla}-{run}")
        row = _timed([sys.executable, "-m", "spectrax", "analyze", checkpoint, "--out", out, *extra_args], env)
        if not os.path.isfile(os.path.join(out, "report.md")):
            raise RuntimeError(f"spectrax analyze published no report.md in {out}")
        row.pop("last_line")
        rows.append({"tool": "spectrax", "run": run, "xla": xla, **row})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def weightwatcher_row(checkpoint: str, python: str = WW_PYTHON) -> dict | None:
    """WeightWatcher's `analyze(mp_fit=True, randomize=True)` on `checkpoint` in `python`'s fresh
    process, or None (and a message) when that Python or its weightwatcher is missing."""
    if not os.path.exists(python):
        print(f"weightwatcher skipped: no Python at {python} (make a venv with torch, transformers and "
              "weightwatcher there, or pass --ww-python)", flush=True)
        return None
    probe = subprocess.run([python, "-c", "import torch, transformers, weightwatcher"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"weightwatcher skipped: {python} cannot import torch, transformers and weightwatcher "
              f"({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'no message'})", flush=True)
        return None
    row = _timed([python, "-c", _WW_CHILD, checkpoint])
    child = json.loads(row.pop("last_line"))
    row = {"tool": "weightwatcher", "run": "mp_fit+randomize", "xla": "", **row, **child}
    print(json.dumps(row), flush=True)
    return row


def _table(rows: list[dict]) -> str:
    lines = [f"{'tool':>13} {'run':>16} {'xla':>7} {'wall s':>7} {'CPU s':>7} {'load':>11} {'analyze s':>9}"]
    for r in rows:
        analyze = f"{r['analyze_s']:.1f}" if "analyze_s" in r else ""
        lines.append(f"{r['tool']:>13} {r['run']:>16} {r['xla']:>7} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} "
                     f"{r['load_before']:>5.1f}-{r['load_after']:<5.1f} {analyze:>9}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="minilm", help="the BERT written when no --checkpoint")
    parser.add_argument("--checkpoint", default=None, help="an existing BERT checkpoint folder to use instead")
    parser.add_argument("--xla", nargs="+", choices=("default", "quick"), default=["default"])
    parser.add_argument("--runs", nargs="+", choices=("cold", "warm"), default=["cold", "warm"])
    parser.add_argument("--ww-python", default=WW_PYTHON, help="Python with torch, transformers and weightwatcher")
    parser.add_argument("--no-weightwatcher", action="store_true", help="time spectrax only")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="spectrax-ww-")
    try:
        checkpoint = args.checkpoint or write_bert_checkpoint(os.path.join(scratch, f"bert-{args.shape}"),
                                                              **SHAPES[args.shape])
        rows = [row for xla in args.xla for row in spectrax_rows(checkpoint, scratch, xla=xla, runs=args.runs)]
        ww = None if args.no_weightwatcher else weightwatcher_row(checkpoint, args.ww_python)
        rows += [ww] if ww else []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "date": time.strftime("%Y-%m-%d %H:%M"), "checkpoint": args.checkpoint or f"generated {args.shape}",
              "rows": rows}
    print("\n" + _table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
