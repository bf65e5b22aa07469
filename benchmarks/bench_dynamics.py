"""Dynamics benchmark: the Scan-and-Snap Fig. 6 grid as one compiled call vs a loop vs numpy.

The grid of docs/dynamics.md, Setups (last tokens {1, 3, 5, 10} x lr_Z {0.5, 1, 2, 3} x lr_Y/lr_Z {1, 2, 5, 10}
= 64 configurations, 10 seeds, 100 SGD-with-momentum steps, batch 128, sequence length 128):

1. `scan_snap.run_grid`: all configurations x seeds in ONE jit-compiled call (one compile), made of
   one vmapped group per number of last tokens at its own size (M = 33, 79, 125, 240). (An earlier
   version padded every configuration to M = 240 and vmapped them all as one group: 3x the work
   in the M^2 products, 4x slower than the loop below on a 2-core CPU; it was removed.)
2. a Python loop over the configurations, each a jitted call vmapped over its seeds at its own
   size: four compiles (one per number of last tokens), 64 dispatches;
3. the same update written in numpy (hand-derived gradient, same sampling scheme) for one seed of
   one configuration, as steps per second; its gradient is checked against `jax.grad` first.

Each JAX figure is the median of `--repeats` calls after a warm-up call (which compiles; its time
is reported as "first call"). Throughput is run-steps per second (runs x steps / seconds).

    python benchmarks/bench_dynamics.py [--quick] [--repeats N] [--json out.json]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench_kernels import machine, timed  # noqa: E402
from spectrax.dynamics import loop  # noqa: E402
from spectrax.dynamics import scan_snap as ss  # noqa: E402

__all__ = [
    "GRID",
    "K",
    "QUICK_GRID",
    "check_numpy_gradient",
    "configurations",
    "grouped_grid",
    "jax_one_config",
    "looped_grid",
    "main",
    "numpy_batch",
    "numpy_loss_grad",
    "numpy_one_config",
    "numpy_run",
    "numpy_task",
]

GRID = {"num_last": (1, 3, 5, 10), "lr_z": (0.5, 1.0, 2.0, 3.0), "ratio": (1.0, 2.0, 5.0, 10.0)}
QUICK_GRID = {"num_last": (1, 3), "lr_z": (3.0,), "ratio": (10.0,)}  # CI-sized: two shapes, one compile each
K = 2  # next tokens per last token


def configurations(grid: dict) -> list[tuple[int, float, float]]:
    return list(itertools.product(grid["num_last"], grid["lr_z"], grid["ratio"]))


def grouped_grid(grid: dict, seeds: int, steps: int, repeats: int) -> dict:
    configs = configurations(grid)
    keys = jax.random.split(jax.random.key(0), len(configs) * seeds).reshape(len(configs), seeds)
    groups = [[i for i, c in enumerate(configs) if c[0] == n] for n in grid["num_last"]]
    args = ([keys[np.array(g)] for g in groups], [ss.make_task(n, K) for n in grid["num_last"]],
            [ss.stack([ss.hyper(*configs[i][1:]) for i in g]) for g in groups])
    call = lambda: [traj.entropy for _, traj in ss.run_grid(*args, steps=steps)]  # noqa: E731
    before = loop._scan._cache_size()
    start = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - start
    seconds, _ = timed(call, repeats, warmup=0)
    return {"method": f"one compiled call, {len(groups)} vmapped groups at their own sizes",
            "compiles": loop._scan._cache_size() - before, "first_call_s": first, "seconds": seconds,
            "runs": len(configs) * seeds, "steps": steps}


def _seeds_of_one_config(keys, task, h, *, steps):
    """One configuration's seeds, vmapped: a grid of one group and one configuration."""
    return ss.run_grid([keys[None]], [task], [ss.stack([h])], steps=steps)[0][1].entropy[0]


def looped_grid(grid: dict, seeds: int, steps: int, repeats: int) -> dict:
    configs = configurations(grid)
    tasks = {n: ss.make_task(n, K) for n in grid["num_last"]}
    keys = jax.random.split(jax.random.key(0), len(configs) * seeds).reshape(len(configs), seeds)

    def call():
        return [_seeds_of_one_config(keys[i], tasks[n], ss.hyper(lr, ratio), steps=steps)
                for i, (n, lr, ratio) in enumerate(configs)]

    before = loop._scan._cache_size()
    start = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - start
    seconds, _ = timed(call, repeats, warmup=0)
    return {"method": "Python loop over configurations (each jitted, vmapped over seeds, unpadded)",
            "compiles": loop._scan._cache_size() - before, "first_call_s": first, "seconds": seconds,
            "runs": len(configs) * seeds, "steps": steps}


# ----------------------------------------------------------------------------- numpy reference


def numpy_task(num_last: int):
    task = ss.make_task(num_last, K)
    return {k: np.asarray(v) for k, v in task._asdict().items()}


def numpy_batch(rng, t, batch_size=128, seq_len=128):
    num_facts = len(t["last"])
    fact = np.minimum((rng.random(batch_size, dtype=np.float32) * num_facts).astype(np.int64), num_facts - 1)
    u = rng.random((batch_size, seq_len - 1), dtype=np.float32)
    below = (u[:, :, None] < t["support_cdf"][fact][:, None, :]).sum(axis=1)
    local = np.diff(below, axis=-1, prepend=0).astype(np.float32)
    counts = np.zeros((batch_size, t["probs"].shape[1]), np.float32)
    np.add.at(counts, (np.arange(batch_size)[:, None], t["support"][fact]), local)
    return t["last"][fact], t["next"][fact], counts


def numpy_loss_grad(y, z, query, target, counts):
    """Loss and (dY, dZ) of the count-based model, by hand (float32 numpy)."""
    b = len(query)
    zq = z[query]
    present = counts > 0
    top = np.where(present, zq, -np.inf).max(axis=1, keepdims=True)
    w = counts * np.exp(np.where(present, zq, top) - top)
    norm = np.linalg.norm(w, axis=1, keepdims=True)
    h = w / norm
    logits = h @ y.T
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(np.mean(-np.log(p[np.arange(b), target])))
    dlogits = p
    dlogits[np.arange(b), target] -= 1
    dlogits /= b
    dy = dlogits.T @ h
    dh = dlogits @ y
    dw = (dh - h * np.sum(h * dh, axis=1, keepdims=True)) / norm
    dz = np.zeros_like(z)
    np.add.at(dz, query, dw * w)  # d w / d zq = w on present tokens (0 elsewhere)
    return loss, dy, dz


def numpy_run(t, lr_z: float, ratio: float, steps: int, seed: int = 0, momentum: float = 0.9):
    rng = np.random.default_rng(seed)
    m = t["probs"].shape[1]
    bound = 1 / np.sqrt(m)
    y = rng.uniform(-bound, bound, (m, m)).astype(np.float32)
    z = rng.uniform(-bound, bound, (m, m)).astype(np.float32)
    by, bz = np.zeros_like(y), np.zeros_like(z)
    losses = []
    for _ in range(steps):
        loss, dy, dz = numpy_loss_grad(y, z, *numpy_batch(rng, t))
        by = momentum * by + dy
        bz = momentum * bz + dz
        y -= lr_z * ratio * by
        z -= lr_z * bz
        losses.append(loss)
    return y, z, losses


def check_numpy_gradient(num_last: int) -> float:
    """Max relative difference of the numpy gradient from `jax.grad` on one batch."""
    task = ss.make_task(num_last, K)
    params = ss.init_params(jax.random.key(1), task)
    batch = ss.sample_batch(jax.random.key(2), task)
    g = jax.grad(ss.loss_fn)(params, batch)
    _, dy, dz = numpy_loss_grad(np.asarray(params.y), np.asarray(params.z), np.asarray(batch.query),
                                np.asarray(batch.target), np.asarray(batch.counts))
    return max(float(np.abs(dy - g.y).max() / np.abs(g.y).max()), float(np.abs(dz - g.z).max() / np.abs(g.z).max()))


def numpy_one_config(num_last: int, steps: int, repeats: int) -> dict:
    t = numpy_task(num_last)
    seconds, _ = timed(lambda: numpy_run(t, 1.0, 2.0, steps), repeats, warmup=0)
    return {"method": f"numpy, one seed of one configuration (#last={num_last}, M={t['probs'].shape[1]})",
            "compiles": 0, "first_call_s": None, "seconds": seconds, "runs": 1, "steps": steps}


def jax_one_config(num_last: int, steps: int, repeats: int) -> dict:
    task = ss.make_task(num_last, K)
    call = lambda: ss.run(jax.random.key(0), task, ss.hyper(1.0, 2.0), steps=steps)[1].loss  # noqa: E731
    start = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - start
    seconds, _ = timed(call, repeats, warmup=0)
    return {"method": f"jax jit, one seed of one configuration (#last={num_last})", "compiles": 1,
            "first_call_s": first, "seconds": seconds, "runs": 1, "steps": steps}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"grid {QUICK_GRID} with 2 seeds")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per figure (default 3; quick 1)")
    parser.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args(argv)
    grid = QUICK_GRID if args.quick else GRID
    seeds, steps = (2, 20) if args.quick else (10, 100)
    repeats = args.repeats or (1 if args.quick else 3)
    numpy_last = max(grid["num_last"])
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick,
              "grid": grid, "seeds": seeds, "steps": steps, "load_before": os.getloadavg()}
    report["numpy_gradient_max_rel_error"] = check_numpy_gradient(numpy_last)
    rows = [grouped_grid(grid, seeds, steps, repeats), looped_grid(grid, seeds, steps, repeats),
            jax_one_config(numpy_last, steps, repeats), numpy_one_config(numpy_last, steps, repeats)]
    for r in rows:
        r["run_steps_per_s"] = r["runs"] * r["steps"] / r["seconds"]
    report["rows"] = rows
    report["one_call_speedup_over_loop"] = rows[1]["seconds"] / rows[0]["seconds"]
    report["load_after"] = os.getloadavg()
    print(f"Scan-and-Snap Fig. 6 grid: {len(configurations(grid))} configurations x {seeds} seeds x {steps} steps "
          f"(batch 128, length 128)\n")
    print("| method | compiles | first call s | s | runs | run-steps/s |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        first = "" if r["first_call_s"] is None else f"{r['first_call_s']:.2f}"
        print(f"| {r['method']} | {r['compiles']} | {first} | {r['seconds']:.3f} | {r['runs']} | "
              f"{r['run_steps_per_s']:.0f} |")
    print(f"\none compiled call vs loop over configurations: {report['one_call_speedup_over_loop']:.2f}x "
          f"(steady state); numpy gradient vs jax.grad: max rel. error {report['numpy_gradient_max_rel_error']:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return report


if __name__ == "__main__":
    import spectrax

    spectrax.configure_cpu()
    main()
