"""Depth scaling: streaming, whole loading and end-to-end `analyze` of bf16 checkpoints.

For each depth, writes a Llama-format checkpoint with real per-layer shapes (default Qwen2.5-14B:
E=5120, H=40, KV=8, D=128, F=13824; one layer per shard), then in a fresh process per mode:
`stream` reads every layer (`spectrax.stream_layers`), `load` loads the whole model
(`spectrax.load`), `analyze` runs `spectrax.run.analysis` (default `--analyses laws`, 16 null
draws) end to end into a scratch folder on one CPU device, `analyze-cores` the same with one CPU
device per core, as the command line runs it, and `numpy-sv` the baseline of issue 20's whole-matrix
target: numpy's singular values (`np.linalg.svd(compute_uv=False)`, float32) of each layer's seven
matrices, streamed the same way. Reports wall time, CPU time (user + system, the fairer figure on a
shared machine), the 1-minute load average at its start and end, read bandwidth and peak RSS of each,
so "time linear, memory flat in depth" can be read off.

    python benchmarks/bench_loading.py --layers 2 4 8 [--shape 14b|8b|small] [--modes stream load analyze]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

__all__ = ["SHAPES", "main", "run"]

SHAPES = {
    "14b": dict(hidden_size=5120, num_heads=40, num_kv_heads=8, head_dim=128, intermediate_size=13824),
    "8b": dict(hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128, intermediate_size=14336),
    "small": dict(hidden_size=1024, num_heads=16, num_kv_heads=4, head_dim=64, intermediate_size=2816),
}

_CHILD = r"""
import json, os, resource, sys, time
import jax
import numpy as np
import spectrax as sx
path, mode = sys.argv[1], sys.argv[2]
if mode == "analyze-cores":   # as the command line runs: one CPU device per core
    from spectrax.cli import use_every_core
    use_every_core()
else:
    sx.configure_cpu(num_devices=1)
start, load_start = time.perf_counter(), os.getloadavg()[0]
checksum = 0.0
if mode.startswith("analyze"):
    import tempfile
    from spectrax.run import analyze
    with tempfile.TemporaryDirectory() as scratch:
        analyze(path, scratch + "/out", analyses=sys.argv[3].split(","), num_draws=int(sys.argv[4]),
                shuffle_draws=int(sys.argv[5]), progress=False)
elif mode == "numpy-sv":
    from spectrax.analyses.weights import layer_matrices
    for block in sx.stream_layers(path, parts=["attn", "mlp"]):
        for name, w in layer_matrices(jax.tree.map(lambda x: x[0], block.params)):
            checksum += float(np.linalg.svd(np.asarray(w, np.float32), compute_uv=False)[0])
        del block
elif mode == "stream":
    for block in sx.stream_layers(path):
        checksum += float(np.asarray(block.params["attn"]["q"][0, 0, 0, :8], np.float32).sum())
        del block
else:
    model = sx.load(path)
    checksum = float(np.asarray(model.params["layers"][0]["attn"]["q"][0, 0, 0, :8], np.float32).sum())
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the parent.
hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_bytes": hwm,
                  "load_average": [load_start, os.getloadavg()[0]], "checksum": checksum}))
"""


def _baseline_rss() -> int:
    out = subprocess.run([sys.executable, "-c", "import spectrax, numpy; print(next(int(l.split()[1]) * 1024 "
                          "for l in open('/proc/self/status') if l.startswith('VmHWM')))"],
                         capture_output=True, text=True, check=True).stdout
    return int(out)


def run(depths: list[int], shape: str, directory: str, modes: list[str], analyses: str = "laws",
        draws: tuple[int, int] = (16, 4)) -> list[dict]:
    from spectrax.io.synthetic import write_llama_checkpoint

    dims = SHAPES[shape]
    rows = []
    for layers in depths:
        path = os.path.join(directory, f"{shape}-L{layers}")
        write_llama_checkpoint(path, num_layers=layers, vocab_size=1024, dtype="bfloat16", layers_per_shard=1, **dims)
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        for mode in modes:
            out = subprocess.run([sys.executable, "-c", _CHILD, path, mode, analyses, *map(str, draws)],
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout)
            rows.append({"shape": shape, "layers": layers, "mode": mode, "checkpoint_bytes": size, **result,
                         "read_gb_per_s": size / result["seconds"] / 1e9})
            print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(path)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="14b")
    parser.add_argument("--dir", default=None, help="scratch folder for generated checkpoints")
    parser.add_argument("--modes", nargs="+", choices=["stream", "load", "analyze", "analyze-cores", "numpy-sv"],
                        default=["stream", "load", "analyze"])
    parser.add_argument("--analyses", default="laws", help="analyses of the analyze mode (default laws)")
    parser.add_argument("--null-draws", type=int, default=16, help="draws of the analyze mode (default 16)")
    parser.add_argument("--shuffle-draws", type=int, default=4, help="esd's shuffled baselines in the analyze mode")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args()
    directory = args.dir or tempfile.mkdtemp(prefix="spectrax-bench-")
    baseline = _baseline_rss()
    rows = run(args.layers, args.shape, directory, args.modes, args.analyses, (args.null_draws, args.shuffle_draws))
    d = SHAPES[args.shape]
    E, H, KV, D, F = d["hidden_size"], d["num_heads"], d["num_kv_heads"], d["head_dim"], d["intermediate_size"]
    layer_bytes = 2 * (E * H * D * 2 + 2 * E * KV * D + 3 * E * F + 2 * E)
    report = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "date": time.strftime("%Y-%m-%d"), "one_layer_bf16_bytes": layer_bytes,
              "one_layer_f32_bytes": 2 * layer_bytes, "import_baseline_rss_bytes": baseline, "shape": args.shape,
              "analyses": args.analyses, "null_draws": args.null_draws, "shuffle_draws": args.shuffle_draws, "rows": rows}
    print(f"\none layer: {layer_bytes / 2**20:.0f} MiB bf16; import baseline RSS {baseline / 2**20:.0f} MiB")
    print(f"{'layers':>6} {'mode':>8} {'seconds':>8} {'CPU s':>8} {'load':>10} {'GB/s':>6} {'peak RSS MiB':>13} "
          f"{'(RSS-baseline)/layer':>21}")
    for r in rows:
        load = "-".join(f"{x:.1f}" for x in r["load_average"])
        print(f"{r['layers']:>6} {r['mode']:>8} {r['seconds']:>8.2f} {r['cpu_seconds']:>8.1f} {load:>10} "
              f"{r['read_gb_per_s']:>6.2f} "
              f"{r['peak_rss_bytes'] / 2**20:>13.0f} {(r['peak_rss_bytes'] - baseline) / layer_bytes:>21.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
