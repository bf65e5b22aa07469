"""Shared test setup: strict dtype promotion everywhere, and paths to the committed fixtures."""

import csv
import importlib
import os
import pathlib

import spectrax  # noqa: F401  (sizes XLA's CPU thread pool before JAX starts; see spectrax/__init__.py)
import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
CHECKPOINTS = FIXTURES / "checkpoints"
REFERENCES = FIXTURES / "references"


def fixture_names() -> list[str]:
    return sorted(p.name for p in CHECKPOINTS.iterdir() if p.is_dir())


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Every XLA CPU executable keeps memory mappings; one pytest process compiling the whole suite's
    kernels passed Linux's default `vm.max_map_count` (65530) and LLVM crashed inside a later
    compile. Tests that count compilations do so within one module, so clearing between modules
    keeps them meaningful.
    """
    yield
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


def experiment(name: str):
    """The script module `experiments/<name>.py` (the repository root is on pytest's path)."""
    return importlib.import_module(f"experiments.{name}")


def csv_rows(path: os.PathLike) -> list[dict[str, str]]:
    """A CSV file's rows as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
