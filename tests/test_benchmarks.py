"""The benchmark suite's quick mode runs end to end and reports every part (figures not asserted)."""

import json
import os
import subprocess
import sys

import numpy as np
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


@pytest.mark.slow
def test_cold_start_reports_compile_time_apart_from_the_rest(tmp_path):
    from benchmarks.__main__ import summarize

    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_coldstart.py"), "--cases", "embedded-laws",
                    "--json", str(tmp_path / "coldstart.json")], cwd=ROOT, check=True, capture_output=True, timeout=1200)
    cold, warm = json.loads((tmp_path / "coldstart.json").read_text())["rows"]
    assert (cold["run"], warm["run"]) == ("cold", "warm") and cold["cache_misses"] > 0 == warm["cache_misses"]
    assert warm["cache_hits"] == cold["cache_hits"] + cold["cache_misses"]  # the warm run compiles nothing
    for row in (cold, warm):
        assert 0 < row["backend_compile_s"] <= row["compile_s"] <= row["command_s"] < row["wall_s"]
        assert row["compile_s"] + row["compute_s"] == pytest.approx(row["command_s"])
    assert "`spectrax analyze --analyses laws` cold: " in summarize(str(tmp_path))


def test_compile_time_counts_overlapping_traces_once():
    from benchmarks.bench_coldstart import union_seconds

    assert union_seconds([]) == 0.0
    assert union_seconds([(0.0, 1.0), (0.25, 0.5), (2.0, 3.0)]) == 2.0  # a nested trace inside another
    assert union_seconds([(1.0, 2.0), (0.0, 1.5)]) == 2.0  # overlapping, given out of order


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_numpy_peer_of_the_laws_computes_what_spectrax_reports(tmp_path, dtype, capsys):
    """`laws_numpy.py` (bench_coldstart's peer) reads the same heads and gets spectrax's pearson_qk
    and ssr_qk, so the benchmark compares like with like."""
    import jax

    from benchmarks import laws_numpy
    from spectrax.analyses import laws
    from spectrax.io import load
    from spectrax.io.synthetic import write_llama_checkpoint

    path = tmp_path / "ckpt"
    write_llama_checkpoint(path, num_layers=2, dtype=dtype, layers_per_shard=1)
    peer = laws_numpy.main([str(path), "--num-draws", "1"])
    assert peer["svds"] == 2 * (4 + 2 + 2) * 2 and peer["query_heads"] == 8
    model = load(path)
    ours = laws.head_laws(model.params["layers"][0]["attn"], jax.random.key(0), num_draws=2)
    assert peer["median_pearson"] == pytest.approx(float(np.median(ours["pearson_qk"])), rel=1e-5)
    assert peer["median_ssr"] == pytest.approx(float(np.median(ours["ssr_qk"])), rel=1e-4)


def test_weightwatcher_bench_writes_a_bert_spectrax_reads_and_skips_without_weightwatcher(tmp_path, capsys):
    from safetensors.numpy import load_file

    from benchmarks.bench_weightwatcher import SHAPES, weightwatcher_row, write_bert_checkpoint
    from spectrax.io.load import open_source

    path = write_bert_checkpoint(str(tmp_path / "bert"), **SHAPES["tiny"])
    spec = open_source(path).spec
    assert (spec.num_layers, spec.hidden_size, spec.num_heads) == (2, 64, 4)
    tensors = load_file(os.path.join(path, "model.safetensors"))
    assert len(tensors) == 5 + 2 + 16 * 2 and not tensors["embeddings.word_embeddings.weight"][0].any()
    assert abs(float(tensors["encoder.layer.1.intermediate.dense.weight"].std()) - 0.02) < 0.002
    assert weightwatcher_row(path, python=str(tmp_path / "no-python")) is None
    assert "weightwatcher skipped: no Python at" in capsys.readouterr().out


@pytest.mark.slow
def test_weightwatcher_bench_times_spectrax_cold_without_weightwatcher(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_weightwatcher.py"), "--shape", "tiny",
                          "--runs", "cold", "--ww-python", str(tmp_path / "no-python"), "--json", str(tmp_path / "ww.json")],
                         cwd=ROOT, check=True, capture_output=True, text=True, timeout=1200)
    assert "weightwatcher skipped" in out.stdout
    (row,) = json.loads((tmp_path / "ww.json").read_text())["rows"]
    assert (row["tool"], row["run"], row["xla"]) == ("spectrax", "cold", "default")
    assert 0 < row["cpu_s"] and 0 < row["wall_s"]
