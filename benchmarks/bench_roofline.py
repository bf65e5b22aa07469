"""Roofline: how close the singular-value kernel and the loader come to this machine's limits.

1. The machine's f32 matmul rate (jit `jnp.matmul`, and numpy, on square and on head-shaped
   batched products) and its file-read bandwidth (`readinto` of a freshly written file, so from
   the page cache, as a repeated analysis reads; cold-disk bandwidth needs root to drop caches).
2. `singular_values(method=...)` on every head of one layer (default Qwen2.5-14B: 96 heads of
   128 x 5120): the flops each method must do (QR-first: Householder QR of the E x D transpose,
   2ED^2 - 2D^3/3, plus an SVD of the D x D factor, ~22 D^3 as LAPACK's bidiagonalization + QR
   iteration; CholeskyQR2: three E x D x D products, 6ED^2, two Cholesky factorizations, a
   triangular inverse and product, ~3 D^3, and the same SVD; Gram: the D x D Gram matrix, 2 D^2 E,
   plus a symmetric eigendecomposition, ~9 D^3), the time that many flops takes at the measured
   matmul rate (the floor), and the measured time as a multiple of that floor and of the floor of
   the Householder route's flops (the same yardstick for every method: a method that does more
   flops at a higher rate is only faster if this column drops); the float32 kernels again with
   one CPU device per core and the heads split over them (jaxlib's CPU QR uses one core per call).
3. `stream_layers` over a generated bf16 checkpoint vs reading its files raw: the fraction of the
   raw read bandwidth the loader reaches (its extra work: bf16 decoding, reshaping to heads).

    python benchmarks/bench_roofline.py [--quick] [--json out.json]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import spectrax.spectral as sxs  # noqa: E402
from bench_kernels import machine, make_heads, timed  # noqa: E402

__all__ = [
    "kernel_on_every_core",
    "kernel_vs_floor",
    "loader_vs_raw",
    "main",
    "matmul_rates",
    "read_bandwidth",
    "svd_flops",
]


def matmul_rates(quick: bool, repeats: int) -> list[dict]:
    """GFLOP/s of f32 products: square, and the batched (heads, D, E) x (heads, E, D) Gram shape."""
    rng = np.random.default_rng(0)
    n = 1024 if quick else 4096
    heads, d, e = (8, 128, 5120) if quick else (96, 128, 5120)
    cases = {
        f"square {n}x{n} @ {n}x{n}": (rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)),
        f"batched heads ({heads},{d},{e}) @ ({heads},{e},{d})": (
            rng.standard_normal((heads, d, e), np.float32), rng.standard_normal((heads, e, d), np.float32)),
    }
    rows = []
    for name, (a, b) in cases.items():
        flops = 2.0 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.ndim == 3 else 1)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        mm = jax.jit(jnp.matmul)
        seconds, _ = timed(lambda: mm(ja, jb).block_until_ready(), repeats)
        rows.append({"product": name, "library": "jax jit", "seconds": seconds, "gflops": flops / seconds / 1e9})
        seconds, _ = timed(lambda: np.matmul(a, b), repeats)
        rows.append({"product": name, "library": "numpy", "seconds": seconds, "gflops": flops / seconds / 1e9})
    return rows


def svd_flops(method: str, heads: int, d: int, e: int) -> float:
    """Floating-point operations `singular_values(method)` needs for `heads` matrices of d x e."""
    if method == "qr":
        return heads * (2.0 * e * d * d - 2.0 * d**3 / 3 + 22.0 * d**3)
    if method == "cholqr":
        return heads * (6.0 * e * d * d + 3.0 * d**3 + 22.0 * d**3)
    if method == "gram":
        return heads * (2.0 * d * d * e + 9.0 * d**3)
    raise ValueError(method)


def _floor_row(kernel: str, heads: int, method: str, seconds: float, best_gflops: float) -> dict:
    flops = svd_flops(method, heads, 128, 5120)
    floor = flops / (best_gflops * 1e9)
    householder_floor = svd_flops("qr", heads, 128, 5120) / (best_gflops * 1e9)
    return {"kernel": kernel, "heads": heads, "gflop": flops / 1e9, "seconds": seconds, "floor_seconds": floor,
            "times_floor": seconds / floor, "times_householder_floor": seconds / householder_floor}


def kernel_vs_floor(quick: bool, repeats: int, best_gflops: float, jit_gflops: float) -> list[dict]:
    rng = np.random.default_rng(1)
    heads = 8 if quick else 96
    x = jnp.asarray(make_heads(rng, heads, 128, 5120))
    rows = []
    for method, dtype in (("qr", jnp.float32), ("cholqr", jnp.float32), ("gram", jnp.float32),
                          ("gram", jnp.float64)):
        if dtype == jnp.float64 and not jax.config.jax_enable_x64:
            continue
        xd = x.astype(dtype)
        seconds, _ = timed(lambda: sxs.singular_values(xd, method=method).block_until_ready(), repeats)
        row = _floor_row(f"singular_values('{method}') {jnp.dtype(dtype).name}", heads, method, seconds, best_gflops)
        rows.append({**row, "times_jit_matmul_floor": seconds * jit_gflops * 1e9 / (row["gflop"] * 1e9)})
    return rows


_EVERY_CORE = r"""
import json, sys
import jax
import numpy as np
import spectrax.spectral as sxs
from bench_kernels import make_heads, timed
heads, repeats = int(sys.argv[1]), int(sys.argv[2])
x, _ = sxs.shard_batch(make_heads(np.random.default_rng(1), heads, 128, 5120))
out = {m: timed(lambda: sxs.singular_values(x, method=m), repeats)[0] for m in ("qr", "cholqr", "gram")}
print(json.dumps({"devices": jax.local_device_count(), **out}))
"""


def kernel_on_every_core(quick: bool, repeats: int, best_gflops: float) -> list[dict]:
    """The f32 kernels again in a child process with one CPU device per core, the heads split over
    them (`shard_batch`): jaxlib's CPU QR runs one matrix at a time on one core, so one device
    uses one core for the QR however many the machine has."""
    heads = 8 if quick else 96
    env = sxs.cpu_devices_env(os.cpu_count() or 1)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _EVERY_CORE, str(heads), str(repeats)], env=env, cwd=here,
                         capture_output=True, text=True, check=True, timeout=1200)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return [{**_floor_row(f"singular_values('{m}') float32, heads over {result['devices']} CPU devices",
                          heads, m, result[m], best_gflops), "times_jit_matmul_floor": float("nan")}
            for m in ("qr", "cholqr", "gram")]


def read_bandwidth(directory: str, size_bytes: int, repeats: int) -> dict:
    path = os.path.join(directory, "blob.bin")
    block = np.random.default_rng(2).integers(0, 255, 1 << 24, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        for _ in range(size_bytes // len(block)):
            f.write(block)
    buffer = bytearray(1 << 26)

    def read_all():
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass

    seconds, _ = timed(read_all, repeats)
    os.remove(path)
    return {"bytes": size_bytes, "seconds": seconds, "gb_per_s": size_bytes / seconds / 1e9}


def loader_vs_raw(directory: str, quick: bool, repeats: int) -> dict:
    from bench_loading import SHAPES

    from spectrax.io.synthetic import write_llama_checkpoint

    path = os.path.join(directory, "ckpt")
    shape = SHAPES["small" if quick else "14b"]
    write_llama_checkpoint(path, num_layers=2, vocab_size=1024, dtype="bfloat16", layers_per_shard=1, **shape)
    files = [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors")]
    size = sum(os.path.getsize(f) for f in files)
    buffer = bytearray(1 << 26)

    def raw():
        for name in files:
            with open(name, "rb", buffering=0) as f:
                while f.readinto(buffer):
                    pass

    def stream():
        for block in spectrax.stream_layers(path):
            del block

    raw_s, _ = timed(raw, repeats)
    stream_s, _ = timed(stream, repeats)
    shutil.rmtree(path)
    return {"checkpoint_bytes": size, "raw_seconds": raw_s, "stream_seconds": stream_s,
            "raw_gb_per_s": size / raw_s / 1e9, "stream_gb_per_s": size / stream_s / 1e9,
            "fraction_of_raw": raw_s / stream_s}


def _times(x: float) -> str:
    return "n/a" if x != x else f"{x:.1f}x"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized: smaller products, 8 of the 96 heads, a 64 MiB read")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 5; quick 2)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick,
              "load_before": os.getloadavg()}
    report["matmul"] = matmul_rates(args.quick, repeats)
    print("| product | library | s | GFLOP/s |\n|---|---|---:|---:|")
    for r in report["matmul"]:
        print(f"| {r['product']} | {r['library']} | {r['seconds']:.4f} | {r['gflops']:.1f} |")
    # The floor is the best f32 matmul rate measured on this machine, by any library; the rate of
    # jit's own head-shaped product is reported beside it (XLA's CPU matmul is not OpenBLAS's).
    best = max(r["gflops"] for r in report["matmul"])
    jit = max(r["gflops"] for r in report["matmul"] if r["product"].startswith("batched") and r["library"] == "jax jit")
    report["floor_rate_gflops"], report["jit_batched_rate_gflops"] = best, jit
    report["kernels"] = kernel_vs_floor(args.quick, repeats, best, jit)
    if (os.cpu_count() or 1) > 1:
        report["kernels"] += kernel_on_every_core(args.quick, repeats, best)
    print(f"\nfloor: {best:.1f} GFLOP/s (best f32 matmul measured); jit head-shaped matmul {jit:.1f} GFLOP/s\n")
    print("| kernel | heads | GFLOP | s | floor s | x floor | x jit-matmul floor | x floor of Householder's flops |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["kernels"]:
        print(f"| {r['kernel']} | {r['heads']} | {r['gflop']:.1f} | {r['seconds']:.3f} | {r['floor_seconds']:.3f} | "
              f"{r['times_floor']:.1f}x | {_times(r['times_jit_matmul_floor'])} | {r['times_householder_floor']:.1f}x |")
    directory = tempfile.mkdtemp(prefix="spectrax-roofline-")
    try:
        report["read"] = read_bandwidth(directory, (64 if args.quick else 1024) << 20, repeats)
        report["loader"] = loader_vs_raw(directory, args.quick, repeats)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    r, l = report["read"], report["loader"]
    print(f"\nfile read (page cache): {r['gb_per_s']:.2f} GB/s over {r['bytes'] >> 20} MiB")
    print(f"loader: stream_layers {l['stream_gb_per_s']:.2f} GB/s vs raw read of the same files "
          f"{l['raw_gb_per_s']:.2f} GB/s: {l['fraction_of_raw']:.0%} of raw ({l['checkpoint_bytes'] >> 20} MiB bf16)")
    report["load_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return report


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    main()
