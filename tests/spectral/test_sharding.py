"""Device distribution: 4 emulated CPU devices vs 1, and a two-process `jax.distributed` run.

The device count is fixed when JAX initializes, so the multi-device checks run in subprocesses
with `cpu_devices_env` (device count, NPROC, OPENBLAS_NUM_THREADS=1); a generous timeout turns a
hang into a failure.
"""

import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from spectrax.spectral import sharding
from spectrax.spectral.nulls import NullSummary, gaussian_null, gaussian_spectrum_null
from spectrax.spectral.pairs import gqa_pair_statistics, singular_value_statistics

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 240

_COMMON = r"""
import sys
import jax
import numpy as np
jax.config.update("jax_numpy_dtype_promotion", "strict")
import spectrax.spectral as sxs
from spectrax.spectral import sharding as sh

def data(L, H=4, KV=2, D=16, E=96):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((L, H, D, E)).astype(np.float32)
    k = rng.standard_normal((L, KV, D, E)).astype(np.float32)
    return q, k

def close(a, b, msg=""):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                                                         atol=1e-6, err_msg=msg), a, b)
"""

_FOUR_DEVICES = _COMMON + r"""
assert jax.local_device_count() == 4, jax.devices()
q, k = data(6)                                   # 6 layers: padded to 8 on 4 devices
one = sh.local_mesh(jax.local_devices()[:1])

# singular values, every method: 4 devices == plain call; and == a mesh of 1 device (the default method)
for method in sxs.METHODS:
    s4 = sh.sharded(sxs.singular_values)(q, method=method)
    assert isinstance(s4, np.ndarray) and s4.shape == (6, 4, 16)
    close(s4, sxs.singular_values(q, method=method), method)
close(sh.sharded(sxs.singular_values)(q), sh.sharded(sxs.singular_values, mesh=one)(q))
# the float64 Gram route (its own x64 program) splits the same way
close(sh.sharded(sxs.gram_singular_values)(q), sxs.gram_singular_values(q), "gram_singular_values")

# GQA pair statistics over (layers, H, D, E), layers not divisible by 4
st4 = sh.sharded(sxs.gqa_pair_statistics)(q, k)
st1 = sh.sharded(sxs.gqa_pair_statistics, mesh=one)(q, k)
assert set(st4) == set(sxs.PAIR_STATISTICS) and st4["pearson"].shape == (6, 4)
close(st4, st1)

# one layer's heads split by KV group: (KV, H/KV, D, E) with (KV, 1, D, E)
by_group = sh.sharded(sxs.gqa_pair_statistics)(q[0].reshape(2, 2, 16, 96), k[0][:, None])
close(jax.tree.map(lambda x: x.reshape(4), by_group), jax.tree.map(lambda x: x[0], st1))

# Monte Carlo nulls: the same draws sharded, padded, or not
key = jax.random.key(3)
n4 = sh.sharded(sxs.gaussian_null)(key, sxs.gqa_pair_statistics, q, k, num_draws=3)
n1 = sxs.gaussian_null(key, sxs.gqa_pair_statistics, q, k, num_draws=3)
assert n4.draws["cos_u"].shape == (3, 6, 4)
close(n4, n1)
sn4 = sh.sharded(sxs.gaussian_spectrum_null)(key, sxs.singular_value_statistics, q, num_draws=3)
close(sn4, sxs.gaussian_spectrum_null(key, sxs.singular_value_statistics, q, num_draws=3))

# really sharded: each device holds 2 of the 8 padded layers, in and out, and no all-gather
qs, n = sh.shard_batch(q)
ks, _ = sh.shard_batch(k)
assert n == 6 and qs.shape == (8, 4, 16, 96)
assert sorted(s.device.id for s in qs.addressable_shards) == [0, 1, 2, 3]
assert all(s.data.shape == (2, 4, 16, 96) for s in qs.addressable_shards)
np.testing.assert_array_equal(np.asarray(qs)[6:], q[[5, 5]])   # padded with copies of the last layer
for fn, args in ((sxs.singular_values, (qs,)), (sxs.gqa_pair_statistics, (qs, ks))):
    out = fn(*args)
    for leaf in jax.tree.leaves(out):
        assert leaf.sharding.spec[0] == "batch", leaf.sharding
        assert [s.data.shape[0] for s in leaf.addressable_shards] == [2, 2, 2, 2]
    hlo = fn.lower(*args).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo, fn
null = sxs.gaussian_null(key, sxs.gqa_pair_statistics, qs, ks, num_draws=3)
assert null.mean["pearson"].sharding.spec[0] == "batch"
assert [s.data.shape for s in null.mean["pearson"].addressable_shards] == [(2, 4)] * 4
print("OK")
"""

_PROCESS = _COMMON + r"""
port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=120)
assert jax.process_count() == 2 and jax.local_device_count() == 2 and jax.device_count() == 4
q, k = data(5)
layers = sh.process_layers(5)                    # process 0: layers 0-2, process 1: 3-4
assert list(layers) == ([0, 1, 2] if pid == 0 else [3, 4])
mine = slice(layers.start, layers.stop)
local = {
    "s": sh.sharded(sxs.singular_values)(q[mine]),           # over this process's 2 devices
    "stats": sh.sharded(sxs.gqa_pair_statistics)(q[mine], k[mine]),
}
null = sh.layerwise_null(sxs.gaussian_null, jax.random.key(7), layers, sxs.gqa_pair_statistics,
                         q[mine], k[mine], num_draws=3)
full = sh.gather_layers(local, 5)
full_null = sh.gather_layers(null, 5)
assert full["s"].shape == (5, 4, 16) and full_null.draws["pearson"].shape == (3, 5, 4)
np.savez(f"{out}/process{pid}.npz", s=full["s"],
         **{f"stat_{n}": v for n, v in full["stats"].items()},
         **{f"null_{f}_{n}": v for f in NULL_FIELDS for n, v in getattr(full_null, f).items()})
jax.distributed.shutdown()
print("OK")
""".replace("NULL_FIELDS", repr(NullSummary._fields))


def _env(num_devices):
    env = sharding.cpu_devices_env(num_devices)
    env["PYTHONPATH"] = str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _check(proc, out, err):
    assert proc.returncode == 0 and "OK" in out, f"rc={proc.returncode}\n{out}\n{err[-4000:]}"


def _data(L, H=4, KV=2, D=16, E=96):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((L, H, D, E)).astype(np.float32)
    k = rng.standard_normal((L, KV, D, E)).astype(np.float32)
    return q, k


@pytest.mark.slow
def test_four_devices_equal_one_device():
    proc = subprocess.Popen([sys.executable, "-c", _FOUR_DEVICES], env=_env(4), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"4-device run hung for {TIMEOUT} s\n{out}\n{err[-4000:]}")
    _check(proc, out, err)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_gather_the_single_process_result(tmp_path):
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, "-c", _PROCESS, str(port), str(pid), str(tmp_path)],
                         env=_env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for pid in range(2)
    ]
    results = []
    try:
        for proc in procs:
            results.append(proc.communicate(timeout=TIMEOUT))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        logs = [p.communicate() for p in procs]
        pytest.fail(f"two-process run hung for {TIMEOUT} s\n{logs}")
    for proc, (out, err) in zip(procs, results):
        _check(proc, out, err)

    q, k = _data(5)
    from spectrax.spectral.decompose import singular_values

    ref = {"s": np.asarray(singular_values(q))}
    ref.update({f"stat_{n}": np.asarray(v) for n, v in gqa_pair_statistics(q, k).items()})
    null = sharding.layerwise_null(gaussian_null, jax.random.key(7), range(5), gqa_pair_statistics,
                                   q, k, num_draws=3)
    for field in NullSummary._fields:
        ref.update({f"null_{field}_{n}": np.asarray(v) for n, v in getattr(null, field).items()})
    for pid in range(2):
        got = np.load(tmp_path / f"process{pid}.npz")
        assert set(got.files) == set(ref)
        for name, value in ref.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("num_layers", [0, 1, 5, 7, 48])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_process_layers_partition(num_layers, count):
    blocks = [sharding.process_layers(num_layers, p, count) for p in range(count)]
    assert [i for b in blocks for i in b] == list(range(num_layers))       # disjoint, in order
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        sharding.process_layers(num_layers, count, count)


def test_single_device_helpers():
    x = np.arange(30, dtype=np.float32).reshape(5, 3, 2)
    assert sharding.padded_size(5, 4) == 8 and sharding.padded_size(8, 4) == 8
    assert sharding.padded_size(0, 2) == 2
    padded = sharding.pad_batch(x, 7, axis=0)
    assert padded.shape == (7, 3, 2)
    np.testing.assert_array_equal(padded[:5], x)
    np.testing.assert_array_equal(padded[5:], x[[4, 4]])
    assert sharding.pad_batch(x[:0], 2).shape == (2, 3, 2) and not sharding.pad_batch(x[:0], 2).any()
    assert sharding.pad_batch(x, 5) is x
    assert sharding.pad_batch(jax.numpy.asarray(x), 4, axis=1).shape == (5, 4, 2)

    xs, n = sharding.shard_batch(x)
    assert n == 5 and xs.shape[0] == sharding.padded_size(5, jax.local_device_count())

    s = sharding.sharded(singular_value_statistics)(np.sort(x[..., 0], -1)[:, ::-1].copy())
    assert s["sigma_max"].shape == (5,)
    with pytest.raises(ValueError):                          # split arguments disagree
        sharding.sharded(gqa_pair_statistics)(*_data(2)[:1], _data(3)[1])
    with pytest.raises(ValueError):                          # output has no batch axis
        sharding.sharded(lambda a: a.sum())(x)


def test_gather_layers_and_layerwise_null_single_process():
    q, k = _data(3, D=8, E=40)
    key = jax.random.key(11)
    null = sharding.layerwise_null(gaussian_spectrum_null, key, [4, 5, 6],
                                   singular_value_statistics, q, num_draws=4)
    assert null.draws["erank"].shape == (4, 3, 4) and null.mean["erank"].shape == (3, 4)
    # draws depend on (key, layer) only, up to float32 rounding: a vmapped layer axis vectorizes the
    # chi sampler's arithmetic differently (`test_nulls`), which moves a draw by a few ulps
    for i, layer in enumerate([4, 5, 6]):
        alone = gaussian_spectrum_null(jax.random.fold_in(key, layer), singular_value_statistics,
                                       q[i], num_draws=4)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[..., i, :] if a.ndim == 3 else a[i],
                                                             b, rtol=2e-5), null, alone)
    full = sharding.gather_layers(null, 3, process_index=0, process_count=1)
    assert isinstance(full.draws["erank"], np.ndarray) and full.draws["erank"].shape == (4, 3, 4)
    with pytest.raises(ValueError):
        sharding.gather_layers({"x": np.zeros((2, 4))}, 3)


def test_cpu_devices_env():
    flags = "--foo --xla_force_host_platform_device_count=2"
    env = sharding.cpu_devices_env(4, {"XLA_FLAGS": flags})
    assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=4"
    assert env["NPROC"] == "16" and env["OPENBLAS_NUM_THREADS"] == "1"
    assert sharding.cpu_devices_env(1, {})["NPROC"] == "8"
    assert sharding.cpu_devices_env(2, {"NPROC": "32"})["NPROC"] == "32"
