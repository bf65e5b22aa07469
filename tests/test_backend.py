"""Importing spectrax changes nothing in the process; `configure_cpu` is the one explicit switch.

Each check runs in a fresh interpreter: this test process has long since started JAX."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectrax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_import_leaves_environment_backend_and_jax_alone():
    _python("""
import os, sys
import jax, matplotlib           # what these two do on import is theirs, not spectrax's
matplotlib.use("svg")            # a user's choice of backend (a notebook's inline backend, say)
before = dict(os.environ)
import spectrax, spectrax.analyses, spectrax.cli, spectrax.dynamics, spectrax.models, spectrax.optim
import spectrax.run.store, spectrax.report.plots, spectrax.report.sections, spectrax.spectral
changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}
assert not changed, changed
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
assert not [m for m in sys.modules if m.startswith("orbax")], "orbax imported eagerly"
jax.config.update("jax_num_cpu_devices", 2)   # raises if importing spectrax had started a backend
""")


def test_configure_cpu_sets_pool_blas_and_devices_before_jax_starts():
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC", "OPENBLAS_NUM_THREADS", "XLA_FLAGS")}
    out = _python("""
import os
import jax, jax.numpy as jnp
import spectrax
spectrax.configure_cpu(num_devices=3)
print(os.environ["NPROC"], os.environ["OPENBLAS_NUM_THREADS"], jax.device_count())
jnp.ones(2).block_until_ready()
try:
    spectrax.configure_cpu()
except RuntimeError as err:
    print("refused:", err)
""", env=env).stdout.split("\n")
    assert out[0] == f"{max(8, 4 * (os.cpu_count() or 1), 4 * 3)} 1 3"  # a pool thread per decomposition in flight
    assert out[1].startswith("refused: configure_cpu must be called before JAX starts")


def test_configure_cpu_defaults_to_one_device_per_core_unless_a_count_was_chosen():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.pop("NPROC", None)
    code = "import os, jax, spectrax; spectrax.configure_cpu(); print(jax.local_device_count(), os.environ['NPROC'])"
    cores = os.cpu_count() or 1
    assert _python(code, env=env).stdout.split() == [str(cores), str(max(8, 4 * cores))]
    forced = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=12"}
    assert _python(code, env=forced).stdout.split() == ["12", str(max(48, 4 * cores))]
    assert _python(code, env={**env, "JAX_NUM_CPU_DEVICES": "5"}).stdout.split() == ["5", str(max(8, 4 * cores, 20))]


def test_configure_cpu_keeps_the_users_settings_and_refuses_zero_devices():
    env = {**os.environ, "NPROC": "5", "OPENBLAS_NUM_THREADS": "2"}
    out = _python("import os, spectrax; spectrax.configure_cpu(); print(os.environ['NPROC'], os.environ['OPENBLAS_NUM_THREADS'])",
                  env=env)
    assert out.stdout.split() == ["5", "2"]
    with pytest.raises(ValueError, match="num_devices"):
        spectrax.configure_cpu(num_devices=0)


def test_configure_cpu_after_jax_started_raises():
    jax.numpy.ones(1).block_until_ready()  # this process's backend is running from here on
    with pytest.raises(RuntimeError, match="before JAX starts"):
        spectrax.configure_cpu()


def test_compilation_cache_folder_per_cpu_opt_out_and_respect_for_a_chosen_one(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("SPECTRAX_CACHE_DIR", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the test run's own cache (conftest)
    code = "import spectrax; print(spectrax.enable_compilation_cache())"
    path = _python(code, env=env).stdout.strip()
    assert path.startswith(str(tmp_path / "spectrax" / f"xla-jax{jax.__version__}-")) and os.path.isdir(path)
    assert _python(code, env={**env, "SPECTRAX_COMPILE_CACHE": "0"}).stdout.strip() == "None"
    chosen = _python("import jax, spectrax; jax.config.update('jax_compilation_cache_dir', '/x/y'); "
                     "print(spectrax.enable_compilation_cache())", env=env).stdout.strip()
    assert chosen == "/x/y"


@pytest.mark.slow
def test_the_second_run_of_the_command_compiles_nothing_and_gives_the_same_tables(tmp_path):
    from tests.conftest import CHECKPOINTS

    env = {**os.environ, "SPECTRAX_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the test run's own cache (conftest)
    cached = lambda: sorted(p for _, _, files in os.walk(tmp_path / "cache") for p in files)  # noqa: E731
    tables = []
    for run in ("cold", "warm"):
        out = tmp_path / run
        subprocess.run([sys.executable, "-m", "spectrax", "analyze", str(CHECKPOINTS / "gpt2"), "--out", str(out),
                        "--analyses", "laws", "--null-draws", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600, check=True)
        tables.append((out / "heads.csv").read_text())
        if run == "cold":
            after_cold = cached()
            assert after_cold, "nothing was cached"
    assert cached() == after_cold and tables[0] == tables[1]


def test_jit_compiles_small_calls_quickly_large_ones_fully_once_per_shape_and_nests():
    from spectrax.backend import QUICK_COMPILE, SMALL_PROGRAM_WORK, jit

    calls = []

    @functools.partial(jit, static_argnames=("scale",))
    def gram_trace(x, scale=1.0):
        calls.append(x.shape)
        return scale * jnp.einsum("...ij,...ij->...", x, x)

    small = np.random.default_rng(0).standard_normal((4, 8, 8), dtype=np.float32)
    big = np.ones((SMALL_PROGRAM_WORK // 64 + 1, 8, 8), np.float32)
    np.testing.assert_allclose(gram_trace(small), np.einsum("...ij,...ij->...", small, small), rtol=1e-5)
    assert (gram_trace._quick._cache_size(), gram_trace._full._cache_size()) == (1, 0)
    np.testing.assert_allclose(gram_trace(big, scale=2.0), 128.0)
    assert (gram_trace._quick._cache_size(), gram_trace._full._cache_size()) == (1, 1)
    gram_trace(small + 1)                                          # same shape: no new program
    assert gram_trace._cache_size() == 2 and len(calls) == 2
    # inside another program there is nothing to compile on its own, and JAX refuses compile options there
    np.testing.assert_allclose(jax.jit(lambda x: gram_trace(x) + 1)(small), gram_trace(small) + 1, rtol=1e-6)
    assert QUICK_COMPILE["xla_backend_optimization_level"] == 0


def test_jit_takes_the_work_a_function_declares():
    from spectrax.backend import SMALL_PROGRAM_WORK, jit

    @functools.partial(jit, static_argnames=("n",), work=lambda a: a["n"] * SMALL_PROGRAM_WORK)
    def ramp(key, n):
        return jax.random.normal(key, (n,))

    ramp(jax.random.key(0), 0)
    ramp(jax.random.key(0), n=3)
    assert (ramp._quick._cache_size(), ramp._full._cache_size()) == (1, 1)


def test_quick_and_full_programs_are_separate_cache_entries(tmp_path):
    _python(f"""
import os, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_compilation_cache_dir", {str(tmp_path)!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
from spectrax.backend import SMALL_PROGRAM_WORK, jit
f = jit(lambda x, work: jnp.sin(x).sum(), static_argnames="work", work=lambda a: a["work"])
entries = lambda: len([p for p in os.listdir({str(tmp_path)!r}) if "atime" not in p])
x = np.ones((3, 3), np.float32)
f(x, work=0); quick = entries()
f(x, work=SMALL_PROGRAM_WORK)           # the same computation, fully optimized: its own entry
assert entries() == quick + 1 and f._quick._cache_size() == 1 and f._full._cache_size() == 1, os.listdir({str(tmp_path)!r})
""")
