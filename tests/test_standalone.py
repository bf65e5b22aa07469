"""The project stands on its own: no file refers to documents outside the repository (the design
notes it grew from, or the source texts by their private file names); sources are cited by their
public titles and repositories (docs/statistics.md)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", ".venv", ".pytest_cache", "__pycache__", "build", "dist", "spectrax-results"}
# Built from pieces so this file does not match itself.
_NAME = "SP" + "EC"
FORBIDDEN = re.compile("|".join([_NAME + r"\.md", r"\b" + _NAME + r"\b", r"\.\./" + "shared", "shared/" + "seeds",
                                 r"\b00[0-4]_" + r"\*", "seeds " + r"00[0-4]"]))


def test_no_file_refers_outside_the_repository():
    found = []
    for root, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            if not name.endswith((".py", ".md", ".toml", ".txt", ".cfg", ".ipynb", ".sh")) and name != "run":
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    if FORBIDDEN.search(line):
                        found.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found[:20])


def _report_strings(path: str):
    """String literals of a module that are not docstrings: what its reports and messages print."""
    import ast

    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_reports_name_their_sources_instead_of_saying_the_source():
    """A reader of report.md has no "source" to look up: the text names it by public title or
    repository (docs/statistics.md, "The sources")."""
    bare = re.compile(r"\b[Tt]he source(?:'s| does|\b)(?! \()")
    found = []
    for package in ("analyses", "report", "run"):
        folder = os.path.join(ROOT, "spectrax", package)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                found += [f"spectrax/{package}/{name}:{line}: {text[:90]}"
                          for line, text in _report_strings(os.path.join(folder, name)) if bare.search(text)]
    assert not found, "\n".join(found)
