"""The documentation site builds with `mkdocs build --strict` (a broken link, a missing page or a
docstring mkdocstrings cannot parse is an error), and its API reference lists every public name."""

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# API page -> the packages it documents; every name in their __all__ must have an entry there.
PAGES = {
    "spectrax": ["spectrax"],
    "io": ["spectrax.io"],
    "spectral": ["spectrax.spectral", "spectrax.spectral.alignment"],
    "analyses": ["spectrax.analyses"],
    "models": ["spectrax.models", "spectrax.models.nnx"],
    "report": ["spectrax.report"],
    "dynamics": ["spectrax.dynamics"],
    "optim": ["spectrax.optim"],
}


@pytest.mark.slow
def test_the_site_builds_strictly_and_documents_every_public_name(tmp_path):
    pytest.importorskip("mkdocs", reason="the site needs the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    for page, packages in PAGES.items():
        html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
        for package in packages:
            missing = [name for name in importlib.import_module(package).__all__ if name != "__version__"
                       and f'id="{package}.{name}"' not in html and f'id="{package}.{name}.{name}"' not in html
                       and f'id="spectrax.io.{name}.{name}"' not in html]
            assert not missing, f"api/{page}.md: {package}.{', '.join(missing)} not documented"
    for guide in ("statistics", "spectral", "findings", "dynamics", "architecture", "examples/quickstart",
                  "examples/accelerators"):
        assert (site / guide / "index.html").is_file()
