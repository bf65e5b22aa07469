"""The benchmark suite's quick mode runs end to end and reports every part (figures not asserted)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_suite_runs_and_reports(tmp_path):
    out = tmp_path / "bench"
    subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True, text=True, timeout=900)
    files = set(os.listdir(out))
    assert {"kernels_gpt2.json", "scaling.json", "roofline.json", "dynamics.json", "nulls.json",
            "summary.md"} <= files
    summary = (out / "summary.md").read_text()
    for needle in ("numpy batched", "one real pass", "matmul floor", "loader", "analyze", "run-steps/s", "null draw",
                   "Machine: "):
        assert needle in summary
    scaling = json.loads((out / "scaling.json").read_text())
    assert {r["mode"] for r in scaling["rows"]} == {"stream", "analyze"} and all(r["peak_rss_bytes"] > 0 for r in scaling["rows"])


def test_unknown_part_and_existing_folder_are_refused(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope", "--out", str(tmp_path / "x")], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown parts" in bad.stderr
    existing = subprocess.run([sys.executable, "-m", "benchmarks", "--out", str(tmp_path)], cwd=ROOT,
                              capture_output=True, text=True)
    assert existing.returncode == 2 and "already exists" in existing.stderr
