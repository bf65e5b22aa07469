"""Whole-matrix Gaussian null draws: dense SVD vs Bartlett factor vs chi bidiagonal.

`rank` and `esd` compare each weight matrix's spectrum with the spectra of shape-matched Gaussian
matrices. One draw, the singular values of one `(m, n)` Gaussian matrix, three ways:

- dense: `jax.random.normal (m, n)` then `singular_values(method="qr")` (the kernel `rank`/`esd`
  use for the real whole matrices): O(m n k);
- bartlett: the `(k, k)` triangular QR factor of a Gaussian matrix drawn directly (chi diagonal,
  normals above), then its SVD: O(k^3) (`gaussian_singular_values` before the bidiagonal model);
- bidiagonal: `gaussian_spectrum_draws` (chi bidiagonal + bisection, `spectral.bidiagonal`),
  the path `rank`/`esd` take now, draws one at a time in `lax.map` as they do: O(k^2).

Shapes: SmolLM2-135M attention and MLP (576 x 576, 1536 x 576), Qwen2.5-14B attention and MLP
(5120 x 5120, 13824 x 5120). Each row: the median seconds per draw and the compile time (ahead of
time for dense and Bartlett, first call minus a timed call for the bidiagonal path); the dense and
Bartlett rows time `--slow-draws` draws (1 by default at the 14B shapes, where one takes minutes),
the bidiagonal row `--repeats` calls of `--draws` draws. Load average is
recorded before and after: the machine is shared.

    python benchmarks/bench_nulls.py [--quick] [--json out.json]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spectrax  # noqa: E402,F401  (thread settings before JAX starts)

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import spectrax.spectral as sxs  # noqa: E402
from bench_kernels import machine  # noqa: E402

SHAPES = {"576x576": (576, 576), "1536x576": (1536, 576), "5120x5120": (5120, 5120), "13824x5120": (13824, 5120)}
QUICK_SHAPES = ("576x576", "1536x576")


@functools.partial(jax.jit, static_argnames="shape")
def dense_draw(key, shape):
    return sxs.singular_values(jax.random.normal(key, shape), method="qr")


@functools.partial(jax.jit, static_argnames="shape")
def bartlett_draw(key, shape):
    m, n = shape
    k, big = min(m, n), max(m, n)
    kd, ko = jax.random.split(key)
    diag = jnp.sqrt(2 * jax.random.gamma(kd, jnp.asarray(big - np.arange(k), jnp.float32) / 2))
    r = jnp.triu(jax.random.normal(ko, (k, k)), 1) + jnp.diag(diag)
    return jnp.linalg.svd(r, compute_uv=False)


def bidiagonal_draws(key, shape, draws):
    return sxs.gaussian_spectrum_draws(key, jax.ShapeDtypeStruct(shape, jnp.float32), num_draws=draws)[0]


def _runs(fn, runs):
    times = []
    for i in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(i + 1))
        times.append(time.perf_counter() - start)
    return times


def _compiled(kernel, shape):
    """(compile seconds, a function of the draw index): ahead-of-time, so no draw runs twice."""
    start = time.perf_counter()
    compiled = kernel.lower(jax.random.key(0), shape=shape).compile()
    return time.perf_counter() - start, lambda i: compiled(jax.random.fold_in(jax.random.key(0), i))


def bench_shape(name, slow_draws, draws, repeats):
    shape = SHAPES[name]
    rows = []
    for method, kernel in (("dense", dense_draw), ("bartlett", bartlett_draw)):
        compile_seconds, fn = _compiled(kernel, shape)
        rows.append(dict(method=method, compile_seconds=compile_seconds, seconds=_runs(fn, slow_draws), draws_per_call=1))
    # gaussian_spectrum_draws compiles inside its first call: compile = first call - a timed call
    fn = lambda i: bidiagonal_draws(jax.random.fold_in(jax.random.key(0), i), shape, draws)  # noqa: E731
    start = time.perf_counter()
    jax.block_until_ready(fn(0))
    first = time.perf_counter() - start
    times = _runs(fn, repeats)
    rows.append(dict(method="bidiagonal", compile_seconds=max(first - statistics.median(times), 0.0), seconds=times,
                     draws_per_call=draws))
    for r in rows:
        r.update(shape=name, seconds_per_draw=statistics.median(r["seconds"]) / r["draws_per_call"])
        r["speedup_vs_dense"] = rows[0]["seconds_per_draw"] / r["seconds_per_draw"]
        print(f"| {name} | {r['method']} | {r['seconds_per_draw']:.4g} | {r['speedup_vs_dense']:.1f}x | "
              f"{r['compile_seconds']:.1f} | {len(r['seconds'])} x {r['draws_per_call']} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the two small shapes only")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=None)
    parser.add_argument("--draws", type=int, default=16, help="bidiagonal draws per call (default 16, rank/esd's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed bidiagonal calls")
    parser.add_argument("--slow-draws", type=int, default=None,
                        help="timed dense/Bartlett draws (default 3, 1 at the 14B shapes)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    names = args.shapes or (QUICK_SHAPES if args.quick else tuple(SHAPES))
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg(),
              "draws": args.draws, "rows": []}
    print(json.dumps(report["machine"], indent=1))
    print("| shape | method | s per draw | vs dense | compile s | timed calls x draws |\n|---|---|---:|---:|---:|---|",
          flush=True)
    for name in names:
        slow = args.slow_draws or (1 if min(SHAPES[name]) > 2048 else 3)
        report["rows"] += bench_shape(name, slow, args.draws, args.repeats)
    report["load_after"] = os.getloadavg()
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
