"""The import graph follows the data flow: io -> spectral -> analyses -> report -> run -> cli.

Every `import` and `from ... import` in a package's modules (those inside functions too) is read
with `ast`, so a lazy import cannot hide an upward dependency.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "spectrax"

# package -> the spectrax packages it must never import
FORBIDDEN = {
    "io": ("spectral", "analyses", "report", "run", "cli"),
    "spectral": ("analyses", "report", "run", "cli"),
    "analyses": ("report", "run", "cli"),
    "report": ("run", "cli"),
    "run": ("cli",),
}


def imported_modules(path: pathlib.Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from spectrax import run`
    return found


def offending(package: str) -> list[str]:
    banned = tuple(f"spectrax.{p}" for p in FORBIDDEN[package])
    return sorted(f"{path.relative_to(PACKAGE.parent)} imports {name}"
                  for path in (PACKAGE / package).rglob("*.py") for name in imported_modules(path)
                  if name in banned or name.startswith(tuple(b + "." for b in banned)))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_point_down(package):
    assert offending(package) == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    room = tmp_path / "spectrax" / "analyses"
    room.mkdir(parents=True)
    (room / "bad.py").write_text("def f():\n    from ..run import store\n    import spectrax.report.plots\n")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "spectrax")
    assert offending("analyses") == ["spectrax/analyses/bad.py imports spectrax.report.plots",
                                     "spectrax/analyses/bad.py imports spectrax.run",
                                     "spectrax/analyses/bad.py imports spectrax.run.store"]
