"""Cold start: how much of a command is compiling, and how much is computing.

Runs `spectrax analyze` in a fresh process per run, twice per case against one compilation cache
folder (`SPECTRAX_CACHE_DIR`, empty before the first run): cold (every program compiled by XLA) and
warm (programs read back from the persistent cache). Inside the process, JAX's own monitoring
events time every step of getting a program ready: tracing to a jaxpr, lowering to MLIR, and the
backend compile (or, warm, the cache read). Nested traces overlap, so each kind's time is the
length of the union of its intervals, and `compile_s` the union of all three; `compute_s` is the
command's wall time less `compile_s` (reading, running programs, numpy, writing the report).

Cases (`--cases`):
- `embedded`: `spectrax analyze` on the embedded model, default analyses and draws (the README's
  main command);
- `laws14b`: `spectrax analyze --analyses laws` on a generated 2-layer bf16 checkpoint with
  Qwen2.5-14B layer shapes (E=5120, H=40, KV=8, D=128, F=13824; the laws read no MLP tensor);
- `embedded-laws`: `--analyses laws` on the embedded model (the quick mode's case).

The `laws14b` case also times its peer, `laws_numpy.py` on the same checkpoint (a fresh process,
command start to its result): per-head SVDs one head at a time, without (`numpy`) and with
(`numpy+draws`) the random baseline of as many Gaussian draws per head as spectrax uses. numpy's
BLAS runs one thread unless `OPENBLAS_NUM_THREADS` says otherwise: its threads do not speed up the
SVD of one 128-row head, and on a shared machine they made it ~10x slower.

    python benchmarks/bench_coldstart.py [--cases embedded laws14b] [--json out.json]
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

__all__ = ["CASES", "main", "run_case", "union_seconds"]

CASES = ("embedded", "laws14b", "embedded-laws")
_STEPS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
          "/jax/core/compile/backend_compile_duration": "backend_compile_s"}

_CHILD = r"""
import json, sys, time
started = time.perf_counter()
import jax
from jax import monitoring
spans, counts = [], {}
monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **_: spans.append((event, time.perf_counter() - seconds, time.perf_counter())))
monitoring.register_event_listener(lambda event, **_: counts.__setitem__(event, counts.get(event, 0) + 1))
from spectrax.cli import main
imported = time.perf_counter()
rc = main(sys.argv[1:])
done = time.perf_counter()
print(json.dumps({"rc": rc, "import_s": imported - started, "command_s": done - imported, "spans": spans,
                  "cache_hits": counts.get("/jax/compilation_cache/cache_hits", 0),
                  "cache_misses": counts.get("/jax/compilation_cache/cache_misses", 0)}))
"""


def union_seconds(intervals) -> float:
    """Total length of the union of `(start, end)` intervals (nested traces counted once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _once(argv: list[str], cache: str) -> dict:
    # the case's own cache folder, whatever JAX cache a caller (the test suite) configured
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env.update(SPECTRAX_CACHE_DIR=cache, SPECTRAX_COMPILE_CACHE="1")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, check=True, env=env)
    wall = time.perf_counter() - started
    child = json.loads(out.stdout.strip().splitlines()[-1])
    spans = [s for s in child.pop("spans") if s[0] in _STEPS]
    steps = {name: union_seconds([(a, b) for e, a, b in spans if e == event]) for event, name in _STEPS.items()}
    compile_s = union_seconds([(a, b) for _, a, b in spans])
    return {"wall_s": wall, **child, **steps, "compile_s": compile_s, "compute_s": child["command_s"] - compile_s}


def run_case(case: str, scratch: str) -> list[dict]:
    """Cold then warm runs of one case, each a dict of seconds (`wall_s`, `import_s`, `command_s`,
    `trace_s`, `lower_s`, `backend_compile_s`, `compile_s`, `compute_s`) and cache hits/misses."""
    if case == "laws14b":
        from spectrax.io.synthetic import write_llama_checkpoint

        path = os.path.join(scratch, "laws14b")
        write_llama_checkpoint(path, num_layers=2, vocab_size=1024, dtype="bfloat16", layers_per_shard=1,
                               hidden_size=5120, num_heads=40, num_kv_heads=8, head_dim=128, intermediate_size=13824)
        argv = ["analyze", path, "--analyses", "laws"]
    else:
        argv = ["analyze"] + (["--analyses", "laws"] if case == "embedded-laws" else [])
    cache = os.path.join(scratch, f"cache-{case}")
    rows = []
    for run in ("cold", "warm"):
        out = os.path.join(scratch, f"out-{case}-{run}")
        rows.append({"case": case, "run": run, "argv": " ".join(["spectrax", *argv]),
                     **_once([*argv, "--out", out], cache)})
        print(json.dumps(rows[-1]), flush=True)
    if case == "laws14b":
        for run, draws in (("numpy", 0), ("numpy+draws", 16)):
            started = time.perf_counter()
            subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "laws_numpy.py"),
                            path, "--num-draws", str(draws)], check=True, capture_output=True,
                           env={**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")})
            rows.append({"case": case, "run": run, "argv": f"python laws_numpy.py --num-draws {draws}",
                         "wall_s": time.perf_counter() - started,
                         **dict.fromkeys(("import_s", "trace_s", "lower_s", "backend_compile_s", "compile_s",
                                          "compute_s", "cache_hits", "cache_misses"), float("nan"))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=["embedded", "laws14b"])
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="spectrax-coldstart-")
    try:
        rows = [row for case in args.cases for row in run_case(case, scratch)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    report = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "load_average_1min_at_end": round(load, 1)},
              "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    print(f"\n{'case':>14} {'run':>5} {'wall':>7} {'import':>7} {'trace':>7} {'lower':>7} {'XLA':>7} "
          f"{'compile':>8} {'compute':>8} {'hits':>5} {'misses':>6}")
    for r in rows:
        print(f"{r['case']:>14} {r['run']:>5} {r['wall_s']:>7.1f} {r['import_s']:>7.1f} {r['trace_s']:>7.1f} "
              f"{r['lower_s']:>7.1f} {r['backend_compile_s']:>7.1f} {r['compile_s']:>8.1f} {r['compute_s']:>8.1f} "
              f"{r['cache_hits']:>5.0f} {r['cache_misses']:>6.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
