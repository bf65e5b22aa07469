"""JAX's CPU backend sized for batched decompositions: an explicit call, never a side effect of import.

    import spectrax as sx
    sx.configure_cpu()                  # first thing, before any JAX array exists: one CPU device per core
    sx.configure_cpu(num_devices=2)     # or a chosen number of CPU devices
    sx.enable_compilation_cache()       # compiled programs kept on disk: the next run compiles nothing

In a notebook, call it in the first cell after the imports (before anything creates an array);
once JAX has started, a second call raises and the kernel has to be restarted to change it.
Without it spectrax runs with JAX's defaults, which are fine on accelerators and on CPUs with
more cores than decompositions in flight.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import os
import platform
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax

__all__ = ["QUICK_COMPILE", "SMALL_PROGRAM_WORK", "array_elements", "configure_cpu", "enable_compilation_cache", "jit"]

QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
"""XLA CPU options that compile a program in about half the time (the main command from an empty
cache: 54 s -> 22 s) and run it ~40% slower (benchmarks/RESULTS.md): right for small programs,
whose compiling is most of their cost, wrong for large ones, which run many times longer than
they compile."""

SMALL_PROGRAM_WORK = 1 << 20
"""Programs whose work (a rough count of their elementary operations: by default the elements of
their array arguments) is below this compile with `QUICK_COMPILE` on a CPU; the rest get XLA's
full optimization. At this size a program runs in about a millisecond and compiles in about a
second, so even a run that calls it once per layer of a deep model spends more time compiling it."""


def _jax_started() -> bool:
    """Whether JAX has created its backends (after which their settings are fixed)."""
    from jax._src import xla_bridge  # no public query exists; JAX's own config validators use this one

    return xla_bridge.backends_are_initialized()


def configure_cpu(num_devices: int | None = None) -> None:
    """Size JAX's CPU backend for spectrax's batched decompositions. Call before JAX starts.

    Sets, in this process's environment:

    - `NPROC` (XLA's CPU thread pool size, read when the CPU client starts) to 4x the cores or
      the CPU devices, whichever is more, at least 8, unless already set. jaxlib's batched CPU
      LAPACK kernels (QR, SVD) block a pool thread while their sub-tasks wait in that same pool,
      so a program with as many decompositions in flight as pool threads (2 on a 2-core machine)
      deadlocks; every CPU device has its own in flight (8 emulated devices hung with a pool of 8).
    - `OPENBLAS_NUM_THREADS=1`, unless already set, for the OpenBLAS that jaxlib's LAPACK calls use
      (scipy's, loaded at the first decomposition): with the larger pool, multithreaded OpenBLAS
      inside each call oversubscribes the cores (2.5-16x slower on 2 cores, benchmarks/RESULTS.md).
      numpy's own OpenBLAS, loaded when numpy was imported, keeps its threads.

    and `num_devices` CPU devices (`jax_num_cpu_devices`), by default one per core, as the command
    line runs: the per-head analyses split their heads over `jax.local_devices()` at call time, and
    jaxlib's CPU decompositions (the Householder fallback, the SVD of each head's triangle) use one
    core per matrix, so one device per core keeps every core busy. A count the user already chose
    (`jax_num_cpu_devices`, `JAX_NUM_CPU_DEVICES`, or `--xla_force_host_platform_device_count` in
    `XLA_FLAGS`) is kept when `num_devices` is None. On a GPU or TPU the analyses run on the
    accelerators and the CPU devices stay idle.

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
    forced = re.findall(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    chosen = jax.config.jax_num_cpu_devices if jax.config.jax_num_cpu_devices != -1 else (
        int(forced[-1]) if forced else None)
    if num_devices is None:
        num_devices = chosen or os.cpu_count() or 1
    if num_devices != chosen:
        jax.config.update("jax_num_cpu_devices", int(num_devices))
    os.environ.setdefault("NPROC", str(max(8, 4 * (os.cpu_count() or 1), 4 * num_devices)))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _cpu_identity() -> str:
    """Architecture, model and feature flags of this CPU: XLA's CPU programs are compiled for the
    host's instruction set, and JAX's cache key does not include it, so a cache copied from
    another machine (a shared home directory, a restored Colab disk) must not be read here."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line and line.split(":")[0].strip()
                          in ("model name", "flags", "Features", "CPU part"))
        parts += [v.strip() for _, v in sorted(fields.items())]
    except OSError:
        parts.append(platform.processor())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Keep compiled XLA programs on disk (JAX's persistent compilation cache), so running the
    same analysis again, in a new process, compiles nothing: most of a small model's analysis is
    compilation.

    The folder is `path`, else `$SPECTRAX_CACHE_DIR`, else `$XDG_CACHE_HOME/spectrax` (or
    `~/.cache/spectrax`), with a subfolder per jax version and CPU (`_cpu_identity`). Returns the
    folder in use, or None when `SPECTRAX_COMPILE_CACHE=0` opts out. A cache folder already
    configured (by the user, or a test run) is left in place and returned.
    """
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    if os.environ.get("SPECTRAX_COMPILE_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if path is None:
        base = os.environ.get("SPECTRAX_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "spectrax")
        path = os.path.join(base, f"xla-jax{jax.__version__}-{_cpu_identity()}")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    # Every program, however quick to compile: a run makes ~100, each entry is kilobytes, and a
    # time threshold would make what the next run finds depend on this run's load.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def array_elements(tree: Any) -> int:
    """Elements in the arrays (and tracers) of a pytree; other leaves count nothing."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape"))


def _top_level() -> bool:
    """Whether no transformation is tracing: JAX refuses compile options on a jit nested in another
    (its program is part of the outer one), and has no public query for this."""
    from jax._src import core

    return core.trace_state_clean()


class _SizedJit:
    """`jax.jit(fun)` twice, with and without `QUICK_COMPILE`; each call takes the one its work
    size picks, so every argument shape still compiles once."""

    def __init__(self, fun: Callable, work: Callable[[Mapping[str, Any]], int] | None, jit_kwargs: dict):
        functools.update_wrapper(self, fun)
        self._signature = inspect.signature(fun)
        self._work = work or (lambda arguments: array_elements(dict(arguments)))
        self._full = jax.jit(fun, **jit_kwargs)
        self._quick = jax.jit(fun, compiler_options=QUICK_COMPILE, **jit_kwargs)

    def _pick(self, args, kwargs):
        if jax.default_backend() != "cpu" or not _top_level():
            return self._full
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return self._quick if self._work(bound.arguments) < SMALL_PROGRAM_WORK else self._full

    def __call__(self, *args, **kwargs):
        return self._pick(args, kwargs)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._pick(args, kwargs).lower(*args, **kwargs)

    def _cache_size(self) -> int:
        return self._full._cache_size() + self._quick._cache_size()


def jit(fun: Callable | None = None, /, *, work: Callable[[Mapping[str, Any]], int] | None = None, **jit_kwargs):
    """`jax.jit` that compiles small programs quickly: the spectral kernels' and analyses' decorator.

    On a CPU a call whose work is under `SMALL_PROGRAM_WORK` runs a program compiled with
    `QUICK_COMPILE`, larger ones a fully optimized program; on accelerators always the latter. The
    work is `work(arguments)`, given the call's arguments by parameter name (defaults filled in),
    else the number of elements in its array arguments; functions that build large arrays from
    static shapes (null draws) pass `work`. `jit_kwargs` go to `jax.jit` (`static_argnames`, ...).
    Compile options are part of JAX's persistent-cache key, so the two programs never mix.

        @functools.partial(jit, static_argnames=("shape",), work=lambda a: math.prod(a["shape"]))
        def draw(key, shape): ...
    """
    if fun is None:
        return functools.partial(jit, work=work, **jit_kwargs)
    return _SizedJit(fun, work, jit_kwargs)
