"""The experiment scripts are thin layers over the library: each one's printed and CSV numbers equal
what `spectrax.analyses` gives directly, an existing --out is refused, and a checkpoint compared
with itself shows no change.

All runs share one small Gaussian checkpoint shape (E = 16, H = 4, KV = 2, D = 8, F = 16,
vocab 16: every weight is 16 wide, and a 16 x 16 crop adds only one new shape) and --null-draws 2,
so every jit kernel compiles once for the whole module.

No `__init__.py` in this folder on purpose: it would make `tests/experiments` a regular package
named `experiments` and shadow the scripts' own `experiments/` folder.
"""

import contextlib
import importlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest

from spectrax import spectral as sp
from spectrax.run import Options, collect
from spectrax.analyses.aggregate import (
    group_means,
    layer_groups,
    layer_means,
    model_values,
)
from spectrax.analyses.kernel import kernel_summary, layer_similarity
from spectrax.io.synthetic import write_llama_checkpoint
from tests.conftest import snapshot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
_common = importlib.import_module("experiments._common")
five_laws_table = importlib.import_module("experiments.five_laws_table")
base_vs_tuned_ssr = importlib.import_module("experiments.base_vs_tuned_ssr")
singular_vector_tables = importlib.import_module("experiments.singular_vector_tables")
kernel_bottleneck = importlib.import_module("experiments.kernel_bottleneck")
lm_rank_table = importlib.import_module("experiments.lm_rank_table")
SCRIPTS = (five_laws_table, base_vs_tuned_ssr, singular_vector_tables, kernel_bottleneck, lm_rank_table)

DRAWS = 2
SHAPE = dict(num_layers=4, hidden_size=16, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=16, vocab_size=16)
OPTIONS = ["--null-draws", str(DRAWS), "--quiet"]


def _run(module, argv) -> str:
    """`module.main(argv)` with stdout captured; asserts exit status 0."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert module.main(argv) == 0
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {name: write_llama_checkpoint(root / name, seed=seed, **SHAPE) for name, seed in (("g1", 1), ("g2", 2))}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("out")


@pytest.fixture(scope="module")
def heads_g1(ckpts):
    """The library's own per-head table, with the options the scripts get."""
    return collect(ckpts["g1"], analyses=["laws", "kernel"], options=Options(num_draws=DRAWS, top_k=4),
                   progress=False)


@pytest.fixture(scope="module")
def same(ckpts, results):
    out = results / "same"
    text = _run(base_vs_tuned_ssr, [ckpts["g1"], ckpts["g1"], "--out", str(out), *OPTIONS])
    return out, text


@pytest.mark.slow
def test_five_laws_table_equals_the_library(ckpts, results, heads_g1, same):
    out = results / "five"
    text = _run(five_laws_table, [ckpts["g1"], ckpts["g2"], "--out", str(out), *OPTIONS])
    table = _common.read_csv(out / "five_laws.csv")
    assert list(table["model"]) == ["g1", "g2"]
    heads = heads_g1.heads
    per_layer = layer_means(heads, ["ssr_qk", "pearson_qk"])
    ssr, pearson = model_values(heads, per_layer, "ssr_qk"), model_values(heads, per_layer, "pearson_qk")
    assert table["median_ssr"][0] == pytest.approx(ssr["median_over_layers"], rel=1e-12)
    assert table["mean_ssr"][0] == pytest.approx(ssr["mean_over_layers"], rel=1e-12)
    assert table["median_pearson"][0] == pytest.approx(pearson["median_over_layers"], rel=1e-12)
    assert table["ssr_null_mean"][0] == pytest.approx(ssr["null_mean"], rel=1e-12)
    assert table["pearson_mean_z"][0] == pytest.approx(pearson["mean_z"], rel=1e-9)
    assert table["pseudo_bulk_ssr"][0] == pytest.approx(ssr["pseudo_bulk"], rel=1e-12)
    assert list(table["layers"]) == [4, 4] and list(table["head_dim"]) == [8, 8] and list(table["hidden"]) == [16, 16]
    # The median over layers of `compare`'s (= `analyze`'s) layers.csv, same options and seed.
    layers_csv = _common.read_csv(same[0] / "compare" / "a" / "layers.csv")
    assert table["median_ssr"][0] == pytest.approx(np.median(layers_csv["ssr_qk"]), rel=1e-12)
    assert table["mean_pearson"][0] == pytest.approx(np.mean(layers_csv["pearson_qk"]), rel=1e-12)
    # Printed: the source's columns, the null columns, and the same numbers.
    row = next(line for line in text.splitlines() if line.startswith("| g1 |"))
    assert f"| {ssr['median_over_layers']:.4g} |" in row and f"| {pearson['median_over_layers']:.4g} |" in row
    assert "Pearson null" in text and "SSR null" in text and "| 4 |" in row
    per_layer_csv = _common.read_csv(out / "g1" / "layers.csv")
    np.testing.assert_allclose(per_layer_csv["ssr_qk_null_mean"], per_layer["ssr_qk_null_mean"], rtol=1e-12)
    assert (out / "g2" / "heads.csv").is_file()


@pytest.mark.slow
def test_base_vs_tuned_on_one_checkpoint_shows_no_change(same):
    out, text = same
    table = _common.read_csv(out / "ssr_groups.csv")
    assert list(table["group"]) == ["0-0", "1-1", "2-2", "3-3"]
    np.testing.assert_array_equal(table["improvement"], 0.0)
    np.testing.assert_array_equal(table["diff"], 0.0)
    np.testing.assert_array_equal(table["z"], 0.0)
    np.testing.assert_array_equal(table["paired_z"], 0.0)
    np.testing.assert_array_equal(table["beyond_null"], 0)
    np.testing.assert_array_equal(table["base"], table["tuned"])
    assert (table["sigma"] > 0).all()
    groups = _common.read_csv(out / "compare" / "groups_diff.csv")  # compare's own group table
    np.testing.assert_allclose(table["base"], groups["ssr_qk_a"], rtol=1e-12)
    np.testing.assert_allclose(table["improvement"], groups["ssr_qk_relative_change"], atol=0)
    assert "+0.00%" in text and "within null spread" in text and "beyond null" not in text.split("σ =")[0]


@pytest.mark.slow
def test_base_vs_tuned_band_is_the_documented_criterion(ckpts, results):
    out = results / "diff"
    _run(base_vs_tuned_ssr, [ckpts["g1"], ckpts["g2"], "--out", str(out), "--groups", "2", *OPTIONS])
    table = _common.read_csv(out / "ssr_groups.csv")
    a = _common.read_csv(out / "compare" / "a" / "heads.csv")
    b = _common.read_csv(out / "compare" / "b" / "heads.csv")
    per_a, per_b = layer_means(a, ["ssr_qk"]), layer_means(b, ["ssr_qk"])
    groups = layer_groups(per_a["layer"].astype(int), 2)
    ga, gb = group_means(per_a, ["ssr_qk"], groups), group_means(per_b, ["ssr_qk"], groups)
    for i, block in enumerate(groups):
        rows = np.isin(a["layer"], block)
        n_eff = len(block) * 2  # two KV heads per layer
        sigma = np.sqrt(np.mean(a["ssr_qk_null_std"][rows] ** 2 + b["ssr_qk_null_std"][rows] ** 2)) / np.sqrt(n_eff)
        diff = gb["ssr_qk"][i] - ga["ssr_qk"][i]
        assert table["n_eff"][i] == n_eff and table["n_heads"][i] == 4 * len(block)
        assert table["sigma"][i] == pytest.approx(sigma, rel=1e-9)
        assert table["z"][i] == pytest.approx(diff / sigma, rel=1e-9)
        assert table["improvement"][i] == pytest.approx(-diff / ga["ssr_qk"][i], rel=1e-9)
        assert table["beyond_null"][i] == int(abs(diff / sigma) > 2)
        # paired: the change per (layer, KV head) unit, its spread over the units
        units = [np.mean(b["ssr_qk"][rows & (a["kv_head"] == g) & (a["layer"] == l)]
                         - a["ssr_qk"][rows & (a["kv_head"] == g) & (a["layer"] == l)]) for l in block for g in (0, 1)]
        assert table["paired_z"][i] == pytest.approx(diff / (np.std(units, ddof=1) / np.sqrt(n_eff)), rel=1e-9)


@pytest.mark.slow
def test_singular_vector_table_uses_the_exact_baseline(ckpts, results, heads_g1):
    out = results / "vectors"
    text = _run(singular_vector_tables, [ckpts["g1"], "--out", str(out), *OPTIONS])
    table = _common.read_csv(out / "singular_vectors.csv")
    heads = heads_g1.heads
    for side, prefix, d in (("U (left, d = head_dim)", "cos_u", 8), ("V (right, d = hidden)", "cos_v", 16)):
        for pair in ("qk", "qv", "kv"):
            row = (table["group"] == "all") & (table["side"] == side) & (table["pair"] == pair.upper())
            assert row.sum() == 1
            assert table["observed"][row][0] == pytest.approx(np.mean(heads[f"{prefix}_{pair}"]), rel=1e-6)
            assert table["exact_null"][row][0] == pytest.approx(float(sp.expected_abs_cos(d)), rel=1e-6)
            assert table["source_baseline"][row][0] == pytest.approx(1 / np.sqrt(d))
            reading = "super-orthogonal" if table["observed"][row][0] < 1 / np.sqrt(d) else "not below baseline"
            assert table["source_reading"][row][0] == reading
    # Gaussian weights: the source's baseline calls most of them "super-orthogonal"; the exact one
    # finds them at chance (|z| <= 2 in every model-level row but, by chance, rarely one).
    u_rows = (table["group"] == "all") & (table["side"] == "U (left, d = head_dim)")
    assert (table["exact_reading"][u_rows] == "at chance").sum() >= 2
    assert (table["ratio_to_source"][u_rows] < 1).all()  # E|cos| ~ 0.8/sqrt(d) < 1/sqrt(d)
    kv = (table["group"] == "all") & (table["pair"] == "KV")
    assert (table["n_eff"][kv] == 4 * 2).all()  # distinct (layer, KV head) pairs
    assert "exact E abs(cos)" in text and "super-orthogonal" in text
    groups = sorted(set(table["group"]) - {"all"})
    assert groups == ["0-0", "1-1", "2-2", "3-3"]


@pytest.mark.slow
def test_kernel_bottleneck_equals_kernel_summary(ckpts, results, heads_g1):
    out = results / "kernel"
    text = _run(kernel_bottleneck, [ckpts["g1"], "--out", str(out), "--top-k", "4", *OPTIONS])
    summary = kernel_summary(heads_g1.heads, layer_similarity(heads_g1.kernel_bases), top_k=4, hidden=16)
    layers = _common.read_csv(out / "kernel_layers.csv")
    expected = np.array([p["kernel_erank_mean"] for p in summary["layers"]])
    np.testing.assert_allclose(layers["kernel_erank"], expected, rtol=1e-12)
    np.testing.assert_allclose(layers["ffn_alignment_ratio"], [p["ffn_alignment_ratio"] for p in summary["layers"]],
                               rtol=1e-12)
    findings = _common.read_csv(out / "kernel_findings.csv")
    bottleneck = summary["bottleneck"]
    assert findings["layer"][0] == str(bottleneck["layer"]) == str(int(layers["layer"][np.argmin(expected)]))
    assert findings["observed"][0] == pytest.approx(bottleneck["kernel_erank"], rel=1e-12)
    assert findings["z"][2] == pytest.approx(bottleneck["ffn_alignment_z"], rel=1e-12)
    largest = summary["adjacent_similarity"]["largest"]
    assert findings["layer"][3] == f"{largest['layers'][0]}-{largest['layers'][1]}"
    assert findings["observed"][3] == pytest.approx(largest["similarity"], rel=1e-9)
    assert findings["null_mean"][3] == pytest.approx(4 / 16)
    # Gaussian weights: the "bottleneck" is just the lowest of four null layers.
    assert findings["verdict"][0] == "within null spread"
    assert "below null" not in text
    similarity = _common.read_csv(out / "kernel_similarity.csv")
    assert len(similarity["similarity"]) == 16
    np.testing.assert_allclose(similarity["similarity"][:: 5], 1.0, rtol=1e-5)  # the diagonal


@pytest.mark.slow
def test_lm_rank_table_equals_rank_tables_and_shows_the_scale_artefact(ckpts, results):
    out = results / "rank"
    text = _run(lm_rank_table, [ckpts["g1"], "--out", str(out), "--crop", "16", *OPTIONS])
    crop = _common.read_csv(out / "crop.csv")
    whole = _common.read_csv(out / "whole.csv")
    cropped = collect(ckpts["g1"], analyses=["rank"], layers=[0], options=Options(num_draws=DRAWS, crop=16),
                      progress=False).matrices
    row = (cropped["layer"] == 0) & (cropped["matrix"] == "attn.q")
    assert (crop["rows"][0], crop["cols"][0]) == (16, 16)  # W_Q (32, 16) cropped
    for stat in ("erank", "erank_null_mean", "max_mean", "ks_gauss", "ks_gauss_z"):
        assert crop[stat][0] == pytest.approx(float(cropped[stat][row][0]), rel=1e-6, nan_ok=True)
    full = collect(ckpts["g1"], analyses=["rank"], options=Options(num_draws=DRAWS), progress=False).matrices
    for kind in ("attn.q", "attn.k", "attn.v", "attn.o"):
        rows = (full["matrix"] == kind) & (full["layer"] >= 0)
        mine = whole["matrix"] == kind
        assert whole["erank"][mine][0] == pytest.approx(np.mean(full["erank"][rows]), rel=1e-6)
        assert whole["erank_z"][mine][0] == pytest.approx(np.mean(full["erank_z"][rows]), rel=1e-6)
        assert whole["layers"][mine][0] == 4
    # The source's KS on pure Gaussian N(0, 1/E) weights: far from 0 (it measures the scale), and
    # equal to what a Gaussian of the same RMS scores.
    assert crop["source_ks"][0] > 0.5
    assert abs(crop["source_ks"][0] - crop["source_ks_null_mean"][0]) < 0.3
    assert "top-left 16x16" in text and "whole attention matrices" in text.lower()


@pytest.mark.parametrize("module", SCRIPTS, ids=lambda m: m.__name__.split(".")[-1])
def test_existing_out_is_refused(module, ckpts, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = snapshot(out)
    argv = [ckpts["g1"], ckpts["g1"]] if module is base_vs_tuned_ssr else [ckpts["g1"]]
    assert module.main([*argv, "--out", str(out), *OPTIONS]) == 2
    assert "already exists" in capsys.readouterr().err
    assert snapshot(out) == before and sorted(os.listdir(tmp_path)) == ["taken"]


def test_bad_arguments_are_one_line_errors(ckpts, tmp_path, capsys):
    assert lm_rank_table.main([ckpts["g1"], "--out", str(tmp_path / "x"), "--matrix", "attn.z", *OPTIONS]) == 2
    assert "attn.z" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert five_laws_table.main([str(tmp_path / "missing"), "--out", str(tmp_path / "y"), *OPTIONS]) == 2
    assert "five_laws_table: error:" in capsys.readouterr().err and not (tmp_path / "y").exists()


@pytest.mark.parametrize("module", SCRIPTS, ids=lambda m: m.__name__.split(".")[-1])
def test_help_names_the_source(module, capsys):
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--out" in text and "Source: the " in text and "What spectrax" in text


@pytest.mark.slow
def test_a_script_runs_standalone_from_anywhere():
    path = os.path.join(REPO, "experiments", "five_laws_table.py")
    done = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--null-draws" in done.stdout
