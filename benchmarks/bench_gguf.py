"""GGUF loader against the safetensors loader on the same weights.

Writes one Llama-format float16 safetensors checkpoint with Gaussian weights (default a
TinyLlama-1.1B layer shape: E=2048, H=32, KV=4, D=64, F=5632), converts it with
`spectrax.io.gguf_export.write_gguf` to GGUF as F16 (the same bytes) and as Q8_0 / Q4_0 / Q4_1
(llama.cpp's block formats), then times `spectrax.stream_layers` over every layer of each, file
in the page cache (best of `--repeats`), plus opening the file (`open_source`: headers, metadata,
layout). Reports MB/s of stored bytes and of float32 bytes produced, so the cost of decoding
(dequantization in numpy by the `gguf` package) is visible next to plain reading.

    python benchmarks/bench_gguf.py [--layers 4] [--repeats 3] [--types F16 Q8_0 Q4_0] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spectrax as sx  # noqa: E402
from spectrax.io.gguf_export import write_gguf  # noqa: E402
from spectrax.io.synthetic import write_llama_checkpoint  # noqa: E402

SHAPE = dict(hidden_size=2048, num_heads=32, num_kv_heads=4, head_dim=64, intermediate_size=5632, vocab_size=4096)


def _stream(path: str, repeats: int) -> dict:
    best_open, best_stream, stored, produced = float("inf"), float("inf"), 0, 0
    for _ in range(repeats):
        start = time.perf_counter()
        source = sx.open_source(path)
        opened = time.perf_counter()
        stored = sum(i.nbytes for layer in source.layout.layers for i in layer.values())
        produced = 0
        for block in sx.stream_layers(source):
            produced += sum(np.asarray(leaf).size * 4 for leaf in _leaves(block.params))
            del block
        best_open = min(best_open, opened - start)
        best_stream = min(best_stream, time.perf_counter() - opened)
    return {"open_s": best_open, "stream_s": best_stream, "stored_bytes": stored, "f32_bytes": produced,
            "stored_MBps": stored / best_stream / 1e6, "f32_MBps": produced / best_stream / 1e6}


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree


def machine() -> dict:
    def first(path, prefix):
        return next((line.split(":", 1)[1].strip() for line in open(path) if line.startswith(prefix)), "?")

    return {"cpu": first("/proc/cpuinfo", "model name"), "cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "gguf": __import__("importlib.metadata").metadata.version("gguf")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--types", nargs="+", default=["F16", "Q8_0", "Q4_0", "Q4_1"])
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = write_llama_checkpoint(os.path.join(scratch, "st"), num_layers=args.layers, dtype="float16", **SHAPE)
        rows.append({"format": "safetensors F16", **_stream(checkpoint, args.repeats)})
        for qtype in args.types:
            start = time.perf_counter()
            path = write_gguf(checkpoint, os.path.join(scratch, f"model-{qtype}.gguf"), qtype=qtype)
            written = time.perf_counter() - start
            rows.append({"format": f"GGUF {qtype}", "write_s": written, **_stream(path, args.repeats)})
            os.remove(path)
    report = {"machine": machine(), "shape": {**SHAPE, "num_layers": args.layers}, "rows": rows}
    print("| format | open s | stream s | stored MB/s | float32 MB/s |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['format']} | {row['open_s']:.2f} | {row['stream_s']:.2f} | {row['stored_MBps']:.0f} | {row['f32_MBps']:.0f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
