"""Kernel benchmark: batched singular values, factored QK kernels and Monte Carlo nulls vs numpy.

For one attention layer of real model shapes (Qwen2.5-14B: 40 query + 8 KV heads of 128 x 5120,
plus the output projection's 40 heads; Llama-3-8B: 32/8 heads of 128 x 4096; GPT-2 small: 12 heads
of 64 x 768), on the same fresh float32 inputs:

1. singular values of every head (Q, K, V, O): spectrax `singular_values` with each method
   (jit-compiled, timed after a warm-up call, `block_until_ready`) vs numpy's batched
   `np.linalg.svd(compute_uv=False)` and a per-head Python loop of `np.linalg.svd` as the source
   scripts do; time ratios and the max relative error of each against float64 numpy;
2. QK-kernel spectra `W_Q,h^T W_K,g` of one layer: factored (`qk_kernel_singular_values`, nothing
   E x E) vs forming the E x E product and taking its SVD with numpy and with jnp (the explicit
   route is timed on a few heads and extrapolated to the layer);
3. Monte Carlo null cost: 32 draws of `gaussian_spectrum_null` and of the full `gaussian_null`,
   each relative to one real pass of the same statistic.

Each head is `U diag(s) V^T` with Haar-random U, V and singular values log-spaced over a
condition number of 1e3 (trained heads span ~10-1e3), so accuracy differences show. Timings are
medians over `--repeats` runs; the machine's load average is recorded before and after, because a
shared machine makes single runs noisy.

Threads. jaxlib's CPU LAPACK kernels run on XLA's intra-op thread pool and call an OpenBLAS of
their own, so this process sets `OPENBLAS_NUM_THREADS=1` (OpenBLAS threads on top of the pool only
oversubscribe the cores: 1.5-2.5x slower) and `NPROC` (the pool size) to 4x the cores: jaxlib
0.9's batched SVD kernel blocks a pool thread while its sub-tasks wait in the same pool, so a
program with two SVDs in flight (`gqa_pair_statistics`) can deadlock on a 2-thread pool. numpy
runs best with OpenBLAS's default threads, so its rows are measured in a child process with the
caller's environment; numpy with one thread is also reported from this process.

    python benchmarks/bench_kernels.py [--quick] [--shapes 14b 8b gpt2] [--json out.json]
"""

from __future__ import annotations

import os
import sys

_NUMPY_CHILD = "--numpy-child" in sys.argv
_CALLER_ENV = dict(os.environ)
if not _NUMPY_CHILD:  # before numpy/jax load OpenBLAS or create the CPU client
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("NPROC", str(4 * len(os.sched_getaffinity(0))))

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import spectrax.spectral as sxs  # noqa: E402

__all__ = [
    "COND",
    "QK_SHAPES",
    "SHAPES",
    "all_heads",
    "bench_nulls",
    "bench_qk",
    "bench_singular_values",
    "errors",
    "machine",
    "main",
    "make_heads",
    "make_layer",
    "numpy_child_rows",
    "numpy_rows",
    "row",
    "timed",
]

SHAPES = {
    "14b": dict(name="Qwen2.5-14B", E=5120, H=40, KV=8, D=128),
    "8b": dict(name="Llama-3-8B", E=4096, H=32, KV=8, D=128),
    "gpt2": dict(name="GPT-2 small", E=768, H=12, KV=12, D=64),
}
QK_SHAPES = ("14b", "gpt2")
COND = 1e3


# ----------------------------------------------------------------------------- inputs


def make_heads(rng, n: int, d: int, e: int, cond: float = COND) -> np.ndarray:
    """`(n, d, e)` float32 heads `U diag(s) V^T`, Haar U/V, s log-spaced from 1 to 1/cond."""
    u = np.linalg.qr(rng.standard_normal((n, d, d)))[0]
    v = np.linalg.qr(rng.standard_normal((n, e, d)))[0]
    s = np.logspace(0, -np.log10(cond), d)
    return ((u * s) @ np.swapaxes(v, -1, -2)).astype(np.float32)


def make_layer(name: str, quick: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """One layer's q, k, v, o `(heads, D, E)`; `quick` keeps an eighth of the heads."""
    shape = SHAPES[name]
    rng = np.random.default_rng(seed)
    frac = 0.125 if quick else 1.0
    h, kv = max(1, round(shape["H"] * frac)), max(1, round(shape["KV"] * frac))
    while h % kv:
        kv -= 1
    d, e = shape["D"], shape["E"]
    return {
        "q": make_heads(rng, h, d, e),
        "k": make_heads(rng, kv, d, e),
        "v": make_heads(rng, kv, d, e),
        "o": make_heads(rng, h, d, e),  # canonical (H, D, E): each head's block, transposed
    }


def all_heads(layer: dict) -> np.ndarray:
    return np.concatenate([layer[n] for n in ("q", "k", "v", "o")])


# ----------------------------------------------------------------------------- measurement


def timed(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of `fn()` (results blocked on) over `repeats` runs after `warmup`."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def errors(s, ref) -> list[float]:
    """[max relative error per singular value, max absolute error / sigma_max] vs `ref`."""
    s = np.asarray(s, np.float64)
    return [float(np.max(np.abs(s - ref) / ref)), float(np.max(np.abs(s - ref) / ref[..., :1]))]


def row(kernel, seconds, times, errs, **extra) -> dict:
    return dict(kernel=kernel, seconds=seconds, times=times, errors=errs, **extra)


def machine() -> dict:
    def first(path, prefix):
        return next((line.split(":", 1)[1].strip() for line in open(path) if line.startswith(prefix)), "?")

    info = {
        "cpu": first("/proc/cpuinfo", "model name"),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(first("/proc/meminfo", "MemTotal").split()[0]) / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or __import__("jaxlib").__version__,
        "device": f"{jax.devices()[0].platform} {jax.devices()[0].device_kind} x{jax.device_count()}",
        "env (spectrax rows)": {k: os.environ.get(k, "unset") for k in ("OPENBLAS_NUM_THREADS", "NPROC")},
        "env (numpy rows)": {k: _CALLER_ENV.get(k, "unset") for k in ("OPENBLAS_NUM_THREADS", "NPROC")},
    }
    try:
        info["numpy_blas"] = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # noqa: BLE001 - best effort
        pass
    return info


# ----------------------------------------------------------------------------- numpy rows


def _explicit_qk_numpy(qh, kg):
    return np.linalg.svd(qh.T @ kg, compute_uv=False)[: qh.shape[0]]


def _qk_reference(q, k) -> np.ndarray:
    """float64 singular values of every head's `q_h^T k_g` from QR factors (exact in exact math)."""
    group = q.shape[0] // k.shape[0]
    ra = np.linalg.qr(np.swapaxes(q, -1, -2).astype(np.float64), mode="r")
    rb = np.linalg.qr(np.swapaxes(k, -1, -2).astype(np.float64), mode="r")
    rb = np.repeat(rb, group, axis=0)
    return np.linalg.svd(ra @ np.swapaxes(rb, -1, -2), compute_uv=False)


def numpy_rows(name: str, quick: bool, repeats: int, explicit_heads: int, qk: bool) -> dict:
    """numpy's rows for one shape, in this process's thread settings."""
    layer = make_layer(name, quick)
    x = all_heads(layer)
    ref = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    out = {"singular_values": []}
    t, ts = timed(lambda: np.linalg.svd(x, compute_uv=False), repeats)
    out["singular_values"].append(row("numpy batched svd(compute_uv=False)", t, ts,
                                      errors(np.linalg.svd(x, compute_uv=False), ref)))
    loop = lambda: [np.linalg.svd(h, compute_uv=False) for h in x]  # noqa: E731
    t, ts = timed(loop, repeats)
    out["singular_values"].append(row("numpy per-head loop svd(compute_uv=False)", t, ts,
                                      errors(np.stack(loop()), ref)))
    if qk:
        q, k = layer["q"], layer["k"]
        group = q.shape[0] // k.shape[0]
        n = min(explicit_heads, q.shape[0])
        qref = _qk_reference(q, k)
        per_head, outs = [], []
        for i in range(n):
            start = time.perf_counter()
            outs.append(_explicit_qk_numpy(q[i], k[i // group]))
            per_head.append(time.perf_counter() - start)
        out["qk"] = [row("numpy: form E x E, svd", statistics.median(per_head) * q.shape[0],
                         per_head, errors(np.stack(outs), qref[:n]), heads_timed=n)]
    return out


def numpy_child_rows(name: str, quick: bool, repeats: int, explicit_heads: int, qk: bool) -> dict:
    """`numpy_rows` in a fresh process with the caller's environment (OpenBLAS default threads)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--numpy-child", "--shapes", name,
           "--repeats", str(repeats), "--explicit-heads", str(explicit_heads)]
    cmd += ["--quick"] if quick else []
    cmd += [] if qk else ["--no-qk"]
    out = subprocess.run(cmd, env=_CALLER_ENV, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- spectrax rows


def bench_singular_values(layer: dict, repeats: int) -> list[dict]:
    x = all_heads(layer)
    ref = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    rows = []
    xj = jax.device_put(x)
    for method in sxs.METHODS:
        t, ts = timed(lambda: sxs.singular_values(xj, method=method), repeats)
        rows.append(row(f"spectrax singular_values({method!r}) f32", t, ts,
                        errors(sxs.singular_values(xj, method=method), ref)))
    with jax.enable_x64(True):
        x64 = jax.device_put(x.astype(np.float64))
        for method in ("qr", "gram"):
            t, ts = timed(lambda: sxs.singular_values(x64, method=method), repeats)
            rows.append(row(f"spectrax singular_values({method!r}) f64", t, ts,
                            errors(sxs.singular_values(x64, method=method), ref)))
    t, ts = timed(lambda: np.linalg.svd(x, compute_uv=False), repeats)
    rows.append(row("numpy batched svd, OPENBLAS_NUM_THREADS=1", t, ts,
                    errors(np.linalg.svd(x, compute_uv=False), ref)))
    return rows


@jax.jit
def _explicit_qk_jnp(qh, kg):
    kernel = jnp.matmul(qh.T, kg, precision=jax.lax.Precision.HIGHEST)  # (E, E)
    return jnp.linalg.svd(kernel, full_matrices=False, compute_uv=False)[: qh.shape[0]]


def bench_qk(layer: dict, repeats: int, explicit_heads: int) -> list[dict]:
    q, k = layer["q"], layer["k"]
    h, group = q.shape[0], q.shape[0] // k.shape[0]
    ref = _qk_reference(q, k)
    qj, kj = jax.device_put(q), jax.device_put(k)
    t, ts = timed(lambda: sxs.qk_kernel_singular_values(qj, kj), repeats)
    rows = [row("spectrax qk_kernel_singular_values (factored)", t, ts,
                errors(sxs.qk_kernel_singular_values(qj, kj), ref), heads_timed=h)]
    n = min(explicit_heads, h)
    jax.block_until_ready(_explicit_qk_jnp(qj[0], kj[0]))  # compile once
    per_head, outs = [], []
    for i in range(n):
        start = time.perf_counter()
        outs.append(np.asarray(jax.block_until_ready(_explicit_qk_jnp(qj[i], kj[i // group]))))
        per_head.append(time.perf_counter() - start)
    rows.append(row("jnp: form E x E, svd (jit)", statistics.median(per_head) * h, per_head,
                    errors(np.stack(outs), ref[:n]), heads_timed=n))
    return rows


_pair_spectra = functools.partial(sxs.gqa_pair, sxs.spectra_pair_statistics, axis=0)


@jax.jit
def _real_pair_spectra(q, k):
    return _pair_spectra(sxs.singular_values(q), sxs.singular_values(k))


def bench_nulls(layer: dict, repeats: int, draws: int) -> list[dict]:
    q, k = jax.device_put(layer["q"]), jax.device_put(layer["k"])
    heads = jax.device_put(all_heads(layer))
    key = jax.random.key(0)
    pair_spectra = "Pearson, SSR, alpha of (s_Q, s_K), every query head"
    pair_all = "all docs/statistics.md §1 pair statistics (with vectors), every query head"
    single = "spectrum statistics (sigma_max, cond, erank, ...), every Q/K/V/O head"
    real = {
        pair_spectra: lambda: _real_pair_spectra(q, k),
        pair_all: lambda: sxs.gqa_pair_statistics(q, k),
        single: lambda: sxs.spectrum_statistics(heads),
    }
    cases = [
        (pair_spectra, "gaussian_spectrum_null",
         lambda: sxs.gaussian_spectrum_null(key, _pair_spectra, q, k, num_draws=draws)),
        (pair_all, "gaussian_null",
         lambda: sxs.gaussian_null(key, sxs.gqa_pair_statistics, q, k, num_draws=draws)),
        (single, "gaussian_spectrum_null",
         lambda: sxs.gaussian_spectrum_null(key, sxs.singular_value_statistics, heads,
                                            num_draws=draws)),
        (single, "gaussian_null",
         lambda: sxs.gaussian_null(key, sxs.singular_value_statistics, heads, num_draws=draws)),
    ]
    real_times = {name: timed(fn, repeats) for name, fn in real.items()}
    rows = []
    for stat, null_name, null in cases:
        t_real, ts_real = real_times[stat]
        t_null, ts_null = timed(null, repeats)
        rows.append(dict(statistic=stat, null=null_name, draws=draws, real_seconds=t_real,
                         real_times=ts_real, null_seconds=t_null, null_times=ts_null,
                         ratio=t_null / t_real))
    return rows


# ----------------------------------------------------------------------------- report


def _err(e):
    return f"{e[0]:.1e} / {e[1]:.1e}"


def _print_sv(rows, base):
    print("| kernel | median s | speed-up vs numpy batched | max rel err / max err over sigma_max |")
    print("|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['seconds']:.3f} | {base / r['seconds']:.2f}x | {_err(r['errors'])} |")


def _print_qk(rows, heads):
    base = rows[0]["seconds"]
    print("| QK kernels, one layer | heads timed | layer s | time vs factored | max rel err / max err over sigma_max |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['heads_timed']}/{heads} | {r['seconds']:.3f} | "
              f"{r['seconds'] / base:.0f}x | {_err(r['errors'])} |")


def _print_nulls(rows, draws):
    print(f"| statistic | null | one real pass s | {draws} draws s | {draws} draws / real pass |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['statistic']} | `{r['null']}` | {r['real_seconds']:.3f} | "
              f"{r['null_seconds']:.2f} | {r['ratio']:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="an eighth of the heads, 2 repeats, 8 null draws, 1 explicit head")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["14b", "8b", "gpt2"])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 3)")
    parser.add_argument("--draws", type=int, default=None, help="null draws (default 32)")
    parser.add_argument("--explicit-heads", type=int, default=None,
                        help="heads timed on the explicit E x E route (default 2; all for gpt2)")
    parser.add_argument("--no-qk", action="store_true")
    parser.add_argument("--no-nulls", action="store_true")
    parser.add_argument("--json", default=None, help="write all results here")
    parser.add_argument("--numpy-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    draws = args.draws or (8 if args.quick else 32)

    if args.numpy_child:
        (name,) = args.shapes
        print(json.dumps(numpy_rows(name, args.quick, repeats, args.explicit_heads, not args.no_qk)))
        return

    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "load_before": os.getloadavg(), "repeats": repeats, "draws": draws,
              "quick": args.quick, "cond": COND, "shapes": {}}
    print(json.dumps(report["machine"], indent=1), flush=True)
    start = time.perf_counter()
    for name in args.shapes:
        layer = make_layer(name, args.quick)
        heads = {n: list(a.shape) for n, a in layer.items()}
        qk = not args.no_qk and name in QK_SHAPES
        explicit = args.explicit_heads or (1 if args.quick else 2)
        if name == "gpt2" and args.explicit_heads is None:
            explicit = heads["q"][0]
        out = report["shapes"][name] = {"model": SHAPES[name]["name"], "heads": heads}
        print(f"\n## {SHAPES[name]['name']}: " + ", ".join(f"{n} {tuple(a)}" for n, a in heads.items()),
              flush=True)

        child = numpy_child_rows(name, args.quick, repeats, explicit, qk)
        out["singular_values"] = bench_singular_values(layer, repeats) + child["singular_values"]
        base = child["singular_values"][0]["seconds"]
        for r in out["singular_values"]:
            r["speedup_vs_numpy_batched"] = base / r["seconds"]
        _print_sv(out["singular_values"], base)
        if qk:
            out["qk"] = bench_qk(layer, repeats, explicit) + child["qk"]
            print()
            _print_qk(out["qk"], heads["q"][0])
        if not args.no_nulls:
            out["nulls"] = bench_nulls(layer, repeats, draws)
            print()
            _print_nulls(out["nulls"], draws)
        sys.stdout.flush()
    report["load_after"] = os.getloadavg()
    report["total_seconds"] = time.perf_counter() - start
    print(f"\nload average before {report['load_before']}, after {report['load_after']}; "
          f"total {report['total_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
