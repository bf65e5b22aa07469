"""Run the benchmark suite: `python -m benchmarks [--quick] [--out DIR] [--only kernels,scaling,roofline]`.

Each part runs in its own process (clean thread settings and a true peak-RSS figure) and writes
JSON into DIR; `DIR/summary.md` collects the headline figures with the machine and date.

- kernels: singular values of every head of a layer (Qwen2.5-14B, Llama-3-8B, GPT-2 small) with
  spectrax's methods vs numpy batched and per-head loops; factored QK-kernel spectra vs forming
  E x E; Monte Carlo null cost (`bench_kernels.py`);
- scaling: stream / load / end-to-end `analyze` of generated bf16 checkpoints with real per-layer
  shapes at growing depth: time and peak RSS (`bench_loading.py`);
- roofline: the machine's matmul rate and read bandwidth, and how close the kernel and the loader
  come to them (`bench_roofline.py`);
- dynamics: the Scan-and-Snap Fig. 6 grid as one vmapped call vs a loop over configurations, and
  one configuration's jitted loop vs the same update in numpy (`bench_dynamics.py`);
- nulls: one whole-matrix Gaussian null draw, dense SVD vs Bartlett factor vs chi bidiagonal, at
  SmolLM2-135M and Qwen2.5-14B matrix shapes (`bench_nulls.py`);
- coldstart: `spectrax analyze` cold and warm (persistent compilation cache), its compile time
  (tracing, lowering, XLA) apart from the rest, on the embedded model and on `--analyses laws` of a
  2-layer Qwen2.5-14B-shaped checkpoint (`bench_coldstart.py`);
- weightwatcher: default `spectrax analyze` cold and warm on a 6-layer, 384-wide BERT (MiniLM-L6
  shapes) against WeightWatcher's `analyze(mp_fit=True, randomize=True)` on it, where a venv with
  weightwatcher is at hand (`bench_weightwatcher.py`).

`--quick` (CI-sized: a check that every part runs and reports, about a minute and a half on the idle
2-core machine of RESULTS.md; not a measurement): GPT-2 heads with the explicit E x E route and
nulls, a 2-layer small checkpoint, smaller roofline products, an 8-configuration dynamics grid, null
draws at the two small shapes; no coldstart or weightwatcher (a cold run is all compilation, minutes when the machine
is shared: `tests/test_benchmarks.py` runs its smallest case on its own). The full suite
takes ~30-60 minutes and ~10 GB of scratch disk. Figures are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

__all__ = ["PARTS", "main", "summarize"]

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = ("kernels", "scaling", "roofline", "dynamics", "nulls", "coldstart", "weightwatcher")


def _commands(quick: bool, out: str) -> dict[str, list[list[str]]]:
    py = sys.executable
    script = lambda name: os.path.join(HERE, name)  # noqa: E731
    if quick:
        kernels = [[py, script("bench_kernels.py"), "--quick", "--shapes", "gpt2", "--json", f"{out}/kernels_gpt2.json"]]
        scaling = [[py, script("bench_loading.py"), "--shape", "small", "--layers", "2", "--modes", "stream", "analyze",
                    "--json", f"{out}/scaling.json"]]
        roofline = [[py, script("bench_roofline.py"), "--quick", "--json", f"{out}/roofline.json"]]
        dynamics = [[py, script("bench_dynamics.py"), "--quick", "--json", f"{out}/dynamics.json"]]
        nulls = [[py, script("bench_nulls.py"), "--quick", "--json", f"{out}/nulls.json"]]
        coldstart = []  # a cold run is all compile: ~3 minutes on the shared machine, not CI-sized
        weightwatcher = []
    else:
        kernels = [[py, script("bench_kernels.py"), "--json", f"{out}/kernels.json"]]
        scaling = [[py, script("bench_loading.py"), "--shape", "14b", "--layers", "2", "4", "8", "16",
                    "--json", f"{out}/scaling.json"]]
        roofline = [[py, script("bench_roofline.py"), "--json", f"{out}/roofline.json"]]
        dynamics = [[py, script("bench_dynamics.py"), "--json", f"{out}/dynamics.json"]]
        nulls = [[py, script("bench_nulls.py"), "--json", f"{out}/nulls.json"]]
        coldstart = [[py, script("bench_coldstart.py"), "--json", f"{out}/coldstart.json"]]
        weightwatcher = [[py, script("bench_weightwatcher.py"), "--json", f"{out}/weightwatcher.json"]]
    return {"kernels": kernels, "scaling": scaling, "roofline": roofline, "dynamics": dynamics, "nulls": nulls,
            "coldstart": coldstart, "weightwatcher": weightwatcher}


def summarize(out: str) -> str:
    """Headline figures from the parts' JSON files in `out`, as Markdown."""
    lines = [f"# spectrax benchmarks ({time.strftime('%Y-%m-%d %H:%M')})", ""]
    machine = None
    for name in sorted(os.listdir(out)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(out, name)) as f:
            report = json.load(f)
        machine = machine or report.get("machine")
        if name.startswith("kernels"):
            for shape in report["shapes"].values():
                rows = {r["kernel"]: r for r in shape["singular_values"]}
                for kernel, r in rows.items():
                    if kernel.startswith("spectrax"):
                        lines.append(f"- {shape['model']} {shape['heads']['q'][0]}+{shape['heads']['k'][0]} heads: "
                                     f"{kernel} {r['seconds']:.3f} s, {r['speedup_vs_numpy_batched']:.1f}x numpy batched")
                for r in shape.get("nulls", []):
                    lines.append(f"- {shape['model']}: {r['statistic']} via `{r['null']}`, "
                                 f"{report['draws']} draws = {r['ratio']:.1f}x one real pass")
        elif name == "scaling.json":
            layer = report["one_layer_f32_bytes"]
            for r in report["rows"]:
                lines.append(f"- {report['shape']} {r['layers']} layers, {r['mode']}: {r['seconds']:.2f} s, peak RSS "
                             f"{r['peak_rss_bytes'] / 2**20:.0f} MiB = {(r['peak_rss_bytes'] - report['import_baseline_rss_bytes']) / layer:.2f} "
                             "f32 layers above the import baseline")
        elif name == "roofline.json":
            lines.append(f"- matmul floor {report['floor_rate_gflops']:.1f} GFLOP/s (jit head-shaped "
                         f"{report['jit_batched_rate_gflops']:.1f})")
            for r in report["kernels"]:
                at_jit = r["times_jit_matmul_floor"]
                lines.append(f"- {r['kernel']}: {r['times_floor']:.1f}x the matmul floor for its flops, "
                             + ("" if math.isnan(at_jit) else f"{at_jit:.1f}x at jit's matmul rate, ")
                             + f"{r['times_householder_floor']:.1f}x the floor for Householder's flops")
            lines.append(f"- loader: {report['loader']['fraction_of_raw']:.0%} of raw read bandwidth "
                         f"({report['loader']['stream_gb_per_s']:.2f} vs {report['loader']['raw_gb_per_s']:.2f} GB/s)")
        elif name == "dynamics.json":
            for r in report["rows"]:
                lines.append(f"- dynamics, {r['method']}: {r['run_steps_per_s']:.0f} run-steps/s "
                             f"({r['runs']} runs x {r['steps']} steps in {r['seconds']:.2f} s)")
        elif name == "coldstart.json":
            for r in report["rows"]:
                lines.append(f"- `{r['argv']}` {r['run']}: {r['wall_s']:.1f} s, of which compile {r['compile_s']:.1f} s "
                             f"(XLA {r['backend_compile_s']:.1f} s), compute and I/O {r['compute_s']:.1f} s, "
                             f"import {r['import_s']:.1f} s")
        elif name == "weightwatcher.json":
            for r in report["rows"]:
                what = f"spectrax analyze {r['run']}" + (" (XLA quick)" if r["xla"] == "quick" else "")
                if r["tool"] == "weightwatcher":
                    what = "WeightWatcher analyze(mp_fit=True, randomize=True)"
                lines.append(f"- BERT {report['checkpoint']}, {what}: {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, "
                             f"load {r['load_before']:.1f}-{r['load_after']:.1f}")
        elif name == "nulls.json":
            for r in report["rows"]:
                lines.append(f"- null draw {r['shape']}, {r['method']}: {r['seconds_per_draw']:.3g} s "
                             f"({r['speedup_vs_dense']:.1f}x dense)")
    if machine:
        lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if not isinstance(v, dict))]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized run (~2 minutes)")
    parser.add_argument("--out", default=None, help="new folder for the JSON results and summary.md")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts from {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; available: {', '.join(PARTS)}")
    out = os.path.abspath(args.out or f"benchmark-results/{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(out):
        parser.error(f"output folder {out} already exists")
    os.makedirs(out)
    started = time.perf_counter()
    seconds = {}
    for part in parts:
        part_started = time.perf_counter()
        for command in _commands(args.quick, out)[part]:
            print(f"\n# {part}: {' '.join(os.path.basename(c) for c in command[1:])}", flush=True)
            subprocess.run(command, check=True)
        seconds[part] = time.perf_counter() - part_started
    text = summarize(out) + "\nWall time per part: " + ", ".join(f"{p} {s:.0f} s" for p, s in seconds.items()) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print("\n" + text + f"\n{time.perf_counter() - started:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
