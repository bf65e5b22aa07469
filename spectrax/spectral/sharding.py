"""Device distribution: one kernel call on one device, on all local devices, or across processes.

Single host. `sharded(fn)` runs a batched kernel with its inputs split over the leading
`(layer, ...)` axis across a 1-D `Mesh` of the local devices (`NamedSharding`, XLA's SPMD
partitioner) and returns host numpy arrays in the original order:

    # q (L, H, D, E), k (L, KV, D, E) -> {name: (L, H)} numpy
    stats = sharded(gqa_pair_statistics)(q, k)
    null = sharded(gaussian_null)(key, gqa_pair_statistics, q, k, num_draws=32)

The batch is padded to a multiple of the device count with copies of its last entry (so padding
costs what a real matrix costs and never sends a batch down a slow path, as a zero matrix would
CholeskyQR's) and the padding stripped from the results. The jaxlib CPU
and GPU linear-algebra custom calls (QR, SVD, eigh) are partitioned along their batch axes, so each
device decomposes only its own matrices, with no collective. Random draws are generated per shard
with the same values as on one device (`jax_threefry_partitionable`, the default since JAX 0.5),
padding included (it only appends layers), so a sharded Monte Carlo null equals the unsharded one.

GQA: split the layer axis, never the head axis, so a query head stays with its KV head. To split
the heads of one layer, reshape to KV groups first: `q (H, D, E) -> (KV, H // KV, D, E)` and
`k (KV, D, E) -> (KV, 1, D, E)`; `gqa_pair_statistics` of those pairs each query head of a group
with the group's single KV head, and the leading axis is then the KV group.

Several processes (multi-host). The script calls `jax.distributed.initialize(...)` itself; then
each process takes `process_layers(num_layers)` (a contiguous, balanced, disjoint block of layer
indices, e.g. the layers it streams from disk), computes its block (with `sharded` over its local
devices if it has several), and `gather_layers` assembles the full `(num_layers, ...)` table on
every process (`multihost_utils.process_allgather`; on CPU it needs the gloo collectives, JAX's
default). Deterministic statistics come out identical to a single-process run. A Monte Carlo null
drawn from one key over a whole stack would depend on how the stack is split, so across processes
use `layerwise_null`: the draws of layer `l` come from `fold_in(key, l)` and are the same in any
split.

Emulated CPU devices (tests): the device count must be fixed before JAX starts, and jaxlib's
batched CPU LAPACK kernels block a thread of the client's thread pool while they wait for their
own sub-tasks on that pool; inside a loop (`lax.map` in the nulls) on N devices at once this
deadlocks when the pool has no more than N threads. `cpu_devices_env(n)` returns the environment
for such a process: the device count, `NPROC` (the CPU client's pool size) at 4x it (at least 8),
and `OPENBLAS_NUM_THREADS=1`. The same deadlock can hit one CPU device on a 2-core machine (two
SVDs in flight, e.g. `gqa_pair_statistics` on 14B-sized heads); accelerators are unaffected.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from spectrax.spectral._util import ArrayTree, ShapeError
from spectrax.spectral.nulls import NullSummary

BATCH_AXIS = "batch"

__all__ = [
    "BATCH_AXIS",
    "cpu_devices_env",
    "gather_layers",
    "layerwise_null",
    "local_mesh",
    "pad_batch",
    "padded_size",
    "process_layers",
    "shard_batch",
    "sharded",
]


# ----------------------------------------------------------------------------- one host


def local_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = BATCH_AXIS) -> Mesh:
    """A 1-D `Mesh` over `devices` (default: `jax.local_devices()`), its one axis `axis_name`."""
    devices = jax.local_devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("a mesh needs at least one device")
    return Mesh(np.asarray(devices, dtype=object), (axis_name,))


def padded_size(size: int, num_shards: int) -> int:
    """`size` rounded up to a multiple of `num_shards` (at least `num_shards`)."""
    return max(1, math.ceil(size / num_shards)) * num_shards


def pad_batch(x: ArrayLike, size: int, axis: int = 0) -> jax.Array | np.ndarray:
    """`x` padded at the end of `axis` to `size` with copies of its last entry (zeros if empty).

    Returned unchanged if already that size. numpy inputs are padded on the host (numpy out),
    others with `jnp` (jax out).
    """
    n = x.shape[axis]
    if n == size:
        return x
    if n > size:
        raise ShapeError(f"axis {axis} has {n} entries, more than the padded size {size}")
    xp = np if isinstance(x, np.ndarray) else jnp
    if n == 0:
        shape = list(x.shape)
        shape[axis] = size
        return xp.zeros(shape, x.dtype)
    last = xp.take(x, xp.asarray([n - 1]), axis=axis)
    return xp.concatenate([x] + [last] * (size - n), axis=axis)


def _batch_sharding(mesh: Mesh, ndim: int, axis: int) -> NamedSharding:
    spec = [None] * ndim
    spec[axis] = mesh.axis_names[0]
    return NamedSharding(mesh, PartitionSpec(*spec))


def shard_batch(x: ArrayLike, mesh: Mesh | None = None, axis: int = 0) -> tuple[jax.Array, int]:
    """Places `x` on `mesh` with `axis` split evenly over the devices, padded (`pad_batch`) if needed.

    Args:
      x: array `(..., n, ...)` with the batch (e.g. layer) axis at `axis`, numpy or jax.
      mesh: 1-D mesh; default `local_mesh()`.
      axis: the axis to split.

    Returns:
      `(sharded, n)`: a `jax.Array` of `padded_size(n, mesh.size)` entries along `axis`, device
      `i` holding the `i`-th contiguous block, and the unpadded size `n` (results keep the first
      `n` entries).
    """
    mesh = local_mesh() if mesh is None else mesh
    if x.ndim <= axis:
        raise ShapeError(f"shape {x.shape} has no axis {axis}")
    n = x.shape[axis]
    x = pad_batch(x, padded_size(n, mesh.size), axis)
    return jax.device_put(x, _batch_sharding(mesh, x.ndim, axis)), n


def _default_axes(out, axis: int):
    """`axis` for every leaf; a `NullSummary`'s draws `(num_draws, ...)` carry it at `axis + 1`."""
    if isinstance(out, NullSummary):
        return NullSummary(axis, axis, None if out.draws is None else axis + 1)
    return axis


def _map_axes(fn, axes, tree):
    """`fn(leaf, axis)` over `tree`, `axes` an int or a pytree prefix of `tree` of ints."""
    return jax.tree.map(lambda ax, sub: jax.tree.map(lambda y: fn(y, ax), sub), axes, tree)


def _take(y, n: int, axis: int, padded: int):
    y = np.asarray(y)
    if y.ndim <= axis or y.shape[axis] != padded:
        raise ShapeError(
            f"output of shape {y.shape} has no batch axis of size {padded} at {axis}; "
            "pass out_axes"
        )
    return y[(slice(None),) * axis + (slice(0, n),)]


def sharded(
    fn: Callable[..., Any],
    *,
    mesh: Mesh | None = None,
    axis: int = 0,
    argnums: Sequence[int] | None = None,
    out_axes: Any = None,
) -> Callable[..., Any]:
    """Wraps a batched kernel so its batch axis is split over the devices of `mesh`.

    Args:
      fn: a kernel batched over `axis`, e.g. `singular_values`, `gqa_pair_statistics`,
        `gaussian_null`; jit-compiled or composed of jitted kernels.
      mesh: 1-D mesh; default `local_mesh()` at call time (one device gives the plain call).
      axis: the batch axis of the split inputs and of the outputs (layers, usually 0).
      argnums: positional arguments to split. Default: every numpy/jax array argument with at
        least `axis + 2` axes (matrices and spectra; PRNG keys, scalars, functions and keyword
        arguments pass unchanged). All split arguments must have the same size along `axis`.
      out_axes: the batch axis of each output leaf: an int or a pytree prefix of the output
        (like `jax.vmap`'s). Default: `axis` for every leaf, and `axis + 1` for the draws
        `(num_draws, ...)` of a `NullSummary`.

    Returns:
      A function with `fn`'s signature returning `fn`'s output as host numpy arrays, padding
      stripped, in the original order.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        m = local_mesh() if mesh is None else mesh
        if argnums is None:
            split = [
                i
                for i, a in enumerate(args)
                if isinstance(a, (np.ndarray, jax.Array)) and a.ndim >= axis + 2
            ]
        else:
            split = [i % len(args) for i in argnums]
        if not split:
            raise ValueError("no argument to split: pass argnums")
        sizes = {args[i].shape[axis] for i in split}
        if len(sizes) != 1:
            raise ShapeError(
                f"split arguments disagree on axis {axis}: "
                f"{[tuple(args[i].shape) for i in split]}"
            )
        n = sizes.pop()
        placed = list(args)
        for i in split:
            placed[i], _ = shard_batch(args[i], m, axis)
        out = fn(*placed, **kwargs)
        axes = _default_axes(out, axis) if out_axes is None else out_axes
        padded = padded_size(n, m.size)
        return _map_axes(lambda y, ax: _take(y, n, ax, padded), axes, out)

    return wrapper


# ----------------------------------------------------------------------------- several processes


def _process(process_index, process_count) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process {index} of {count}")
    return index, count


def process_layers(
    num_layers: int, process_index: int | None = None, process_count: int | None = None
) -> range:
    """This process's layers: a contiguous block, sizes balanced to within one across processes.

    Defaults to `jax.process_index()` of `jax.process_count()`. The blocks of all processes are
    disjoint and cover `range(num_layers)` in order; process p gets
    `num_layers // count + (p < num_layers % count)` layers (possibly none).
    """
    index, count = _process(process_index, process_count)
    base, extra = divmod(int(num_layers), count)
    start = index * base + min(index, extra)
    return range(start, start + base + (index < extra))


def gather_layers(
    local: ArrayTree,
    num_layers: int,
    *,
    axes: Any = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> ArrayTree:
    """Assembles per-process results over `process_layers` into the full table, on every process.

    Args:
      local: this process's results, a pytree of arrays with `len(process_layers(num_layers))`
        entries along each leaf's layer axis (same trailing shapes on every process).
      num_layers: total number of layers.
      axes: the layer axis of each leaf, int or pytree prefix; default as `sharded`'s `out_axes`
        (0, and 1 for a `NullSummary`'s draws).
      process_index: default `jax.process_index()`.
      process_count: default `jax.process_count()`.

    Returns:
      The same pytree of numpy arrays with `num_layers` entries along the layer axis, layer `l`
      at index `l`. Every process must call it (a collective when `process_count > 1`).
    """
    index, count = _process(process_index, process_count)
    axes = _default_axes(local, 0) if axes is None else axes
    mine = len(process_layers(num_layers, index, count))

    def check(y, ax):
        y = np.asarray(y)
        if y.ndim <= ax or y.shape[ax] != mine:
            raise ShapeError(f"process {index} holds {mine} layers; got a leaf of shape {y.shape}")
        return y

    local = _map_axes(check, axes, local)
    if count == 1:
        return local
    from jax.experimental import multihost_utils

    block = math.ceil(num_layers / count)
    padded = _map_axes(lambda y, ax: pad_batch(y, block, ax), axes, local)
    stacked = multihost_utils.process_allgather(padded, tiled=False)  # leaves (count, ...)

    def assemble(y, ax):
        y = np.asarray(y)
        parts = []
        for p in range(count):
            size = len(process_layers(num_layers, p, count))
            parts.append(y[p][(slice(None),) * ax + (slice(0, size),)])
        return np.concatenate(parts, axis=ax)

    return _map_axes(assemble, axes, stacked)


def layerwise_null(
    null_fn: Callable[..., NullSummary],
    key: jax.Array,
    layers: Sequence[int],
    stat_fn: Callable[..., Any],
    *templates: ArrayLike | jax.ShapeDtypeStruct,
    **kwargs: Any,
) -> NullSummary:
    """A Monte Carlo null whose draws for layer `l` depend only on `key` and `l`.

    Runs `null_fn(jax.random.fold_in(key, l), stat_fn, *templates[i], **kwargs)` for each layer
    `l = layers[i]` (vectorized over layers with `jax.vmap`), so the same layer gets the same
    draws whichever process or batch computes it: a multi-process run gathers to the
    single-process table.

    Args:
      null_fn: `gaussian_null`, `gaussian_spectrum_null` or `shuffle_null`.
      key: PRNG key.
      layers: the global layer index of each entry of the templates' leading axis, e.g.
        `process_layers(num_layers)`.
      stat_fn: as for `null_fn`.
      *templates: arrays `(len(layers), ...)`, one layer per leading entry.
      **kwargs: `num_draws`, `batch_size`, ... for `null_fn`.

    Returns:
      `NullSummary` with mean/std `(len(layers), ...)` and draws `(num_draws, len(layers), ...)`.
    """
    layers = np.asarray(list(layers), dtype=np.uint32)
    for t in templates:
        if t.shape[0] != layers.shape[0]:
            raise ShapeError(f"templates {t.shape} need one entry per layer ({len(layers)})")
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(layers))
    run = lambda k, *ts: null_fn(k, stat_fn, *ts, **kwargs)  # noqa: E731
    return jax.vmap(run, out_axes=NullSummary(0, 0, 1))(keys, *templates)


# ----------------------------------------------------------------------------- emulated CPU devices


def cpu_devices_env(num_devices: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a new process that emulates `num_devices` CPU devices.

    Adds `--xla_force_host_platform_device_count=num_devices` to `XLA_FLAGS` (replacing an earlier
    count), sets `NPROC` (the XLA CPU client's thread pool size) to `max(4 * num_devices, 8)`
    unless a larger value is set, and `OPENBLAS_NUM_THREADS=1`. Must be in place before JAX
    initializes, i.e. passed to a subprocess. `env` defaults to a copy of `os.environ`.

    Why NPROC: jaxlib 0.9's batched CPU SVD kernel blocks a pool thread while its sub-tasks wait
    in the same pool; the process deadlocks once every pool thread holds one (each device running
    an SVD inside a `lax.map`, or a program with two SVDs in flight on a 2-thread pool). The pool
    must exceed the number of SVD calls that can be in flight at once.
    """
    env = dict(os.environ if env is None else env)
    count = "xla_force_host_platform_device_count"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if count not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--{count}={int(num_devices)}"])
    try:
        nproc = int(env.get("NPROC", "0"))
    except ValueError:
        nproc = 0
    env["NPROC"] = str(max(nproc, 4 * int(num_devices), 8))
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env
