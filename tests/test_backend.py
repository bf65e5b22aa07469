"""Importing spectrax changes nothing in the process; `configure_cpu` is the one explicit switch.

Each check runs in a fresh interpreter: this test process has long since started JAX."""

import os
import subprocess
import sys

import jax
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
