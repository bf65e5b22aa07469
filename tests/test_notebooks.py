"""The notebooks in examples/ run from top to bottom (CI executes them through a Jupyter kernel,
the accelerator one on 8 emulated CPU devices), are committed without outputs, and point to the
repository that pyproject.toml names."""

import json
import os
import pathlib
import re
import time

import jax
import pytest

from spectrax.spectral import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def _cells(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def test_the_examples_are_there():
    assert [p.name for p in NOTEBOOKS] == ["accelerators.ipynb", "quickstart.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_hold_no_outputs(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert code
    for i, cell in enumerate(code):
        assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: code cell {i} has outputs"
    assert "widgets" not in json.loads(path.read_text(encoding="utf-8"))["metadata"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_badges_and_install_point_to_the_repository(path):
    repo = re.search(r'^Repository = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    text = "".join("".join(c["source"]) for c in _cells(path))
    slug = repo.removeprefix("https://github.com/")
    assert f"https://colab.research.google.com/github/{slug}/blob/main/examples/{path.name}" in text
    assert f"https://kaggle.com/kernels/welcome?src={repo}/blob/main/examples/{path.name}" in text
    assert f"git+{repo}" in text
    assert set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", text)) == {repo}


def _kernel_env(devices: int | None, tmp: pathlib.Path) -> dict[str, str]:
    """This test process's environment for the notebook's kernel: XLA_FLAGS (conftest's
    unoptimized compiles), the JAX compilation cache the suite uses (so the kernel's compiles are
    kept and reused), the emulated device count, and `tmp` as the temporary folder the notebook
    writes into."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "TMPDIR": str(tmp)}
    if jax.config.jax_compilation_cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = str(jax.config.jax_compilation_cache_dir)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if devices is not None:  # the device count and a thread pool sized for it
        env = sharding.cpu_devices_env(devices, env)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("name,devices", [("quickstart", None), ("accelerators", 8)])
def test_notebook_runs(name, devices, tmp_path):
    nbclient = pytest.importorskip("nbclient", reason="the test extra: pip install -e '.[test]'")
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "examples" / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute(env=_kernel_env(devices, tmp_path))  # raises CellExecutionError naming the failing cell
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= (5 if name == "quickstart" else 0), "figures were not shown inline"
    if name == "quickstart":  # with ipywidgets (the `notebook` extra), analyze's progress is one widget
        cell = next(c for c in nb.cells if c.cell_type == "code" and "sx.analyze(" in c.source)
        _assert_one_progress_display(cell.outputs, widgets=True)


def _shown(text: str) -> list[str]:
    """The lines a notebook front end shows for a stream's text: a carriage return rewrites its line."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.rsplit("\r", 1)[-1].strip()]


def _assert_one_progress_display(outputs, widgets: bool) -> None:
    """A cell's `outputs` show analyze's progress as one widget (`widgets`), or as one text line
    rewritten in place on stderr: never a line per update, and no error."""
    assert not [o for o in outputs if o.output_type == "error"]
    bars = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    stderr = _shown("".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"))
    progress = [line for line in stderr if "part" in line]
    if widgets:
        assert len(bars) == 1 and progress == [], (bars, stderr)
    else:
        assert bars == [] and len(progress) == 1 and re.search(r"100%.* (\d+)/\1 ", progress[0]), stderr
        assert len(stderr) <= 4, stderr   # the bar and tqdm's one warning that ipywidgets is missing


@pytest.mark.slow
def test_analyze_without_ipywidgets_shows_one_progress_line_in_a_notebook(tmp_path):
    """`analyze()` in a Jupyter cell without ipywidgets (tqdm.auto falls back to text) shows one line
    rewritten in place, printing nothing else; with ipywidgets, `test_notebook_runs[quickstart]`
    sees its one widget."""
    nbclient = pytest.importorskip("nbclient", reason="the test extra: pip install -e '.[test]'")
    nbformat = pytest.importorskip("nbformat")
    cell = ("import sys\nsys.modules['ipywidgets'] = None  # as if it were not installed\nimport spectrax as sx\n"
            f"out = sx.analyze(sx.data.TINY_LLAMA, {str(tmp_path / 'run')!r}, analyses=['laws'], num_draws=2)\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=_kernel_env(None, tmp_path))
    _assert_one_progress_display(nb.cells[0].outputs, widgets=False)
    assert (tmp_path / "run" / "report.md").is_file()
    assert not [o for o in nb.cells[0].outputs if o.output_type == "stream" and o.name == "stdout"]
