"""JAX's CPU backend sized for batched decompositions: an explicit call, never a side effect of import.

    import spectrax as sx
    sx.configure_cpu()                  # first thing, before any JAX array exists
    sx.configure_cpu(num_devices=2)     # or one CPU device per core, as the command line does

In a notebook, call it in the first cell after the imports (before anything creates an array);
once JAX has started, a second call raises and the kernel has to be restarted to change it.
Without it spectrax runs with JAX's defaults, which are fine on accelerators and on CPUs with
more cores than decompositions in flight.
"""

from __future__ import annotations

import os

import jax

__all__ = ["configure_cpu"]


def _jax_started() -> bool:
    """Whether JAX has created its backends (after which their settings are fixed)."""
    from jax._src import xla_bridge  # no public query exists; JAX's own config validators use this one

    return xla_bridge.backends_are_initialized()


def configure_cpu(num_devices: int | None = None) -> None:
    """Size JAX's CPU backend for spectrax's batched decompositions. Call before JAX starts.

    Sets, in this process's environment:

    - `NPROC` (XLA's CPU thread pool size, read when the CPU client starts) to 4x the cores, at
      least 8, unless already set. jaxlib's batched CPU LAPACK kernels (QR, SVD) block a pool
      thread while their sub-tasks wait in that same pool, so a program with as many
      decompositions in flight as pool threads (2 on a 2-core machine) deadlocks; 4x the cores
      because the command line runs one CPU device per core, each with its own in flight.
    - `OPENBLAS_NUM_THREADS=1`, unless already set, for the OpenBLAS that jaxlib's LAPACK calls use
      (scipy's, loaded at the first decomposition): with the larger pool, multithreaded OpenBLAS
      inside each call oversubscribes the cores (2.5-16x slower on 2 cores, benchmarks/RESULTS.md).
      numpy's own OpenBLAS, loaded when numpy was imported, keeps its threads.

    and, if `num_devices` is given, that many CPU devices (`jax_num_cpu_devices`; otherwise JAX's
    choice: one, or `--xla_force_host_platform_device_count` from `XLA_FLAGS`).

    Raises:
      RuntimeError: JAX's backends have already started (an array was created or a function
        compiled), so none of this would take effect.
      ValueError: `num_devices` is not positive.
    """
    if num_devices is not None and num_devices < 1:
        raise ValueError(f"num_devices must be at least 1, got {num_devices}")
    if _jax_started():
        raise RuntimeError("configure_cpu must be called before JAX starts (before the first array is created "
                           "or function compiled); restart the process or notebook kernel and call it first")
    if num_devices is not None:
        jax.config.update("jax_num_cpu_devices", int(num_devices))
    os.environ.setdefault("NPROC", str(max(8, 4 * (os.cpu_count() or 1))))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
