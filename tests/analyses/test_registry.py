"""An analysis is a value: one defined here, registered nowhere, runs through `collect` and
`analyze` beside the built-in ones, without any library file naming it."""

import dataclasses
import json
import os
import pathlib

import numpy as np
import pytest

import spectrax as sx
from spectrax.analyses import ANALYSES, Analysis, LayerOutput, Section
from spectrax.analyses import registry
from spectrax.analyses.registry import resolve
from spectrax.analyses.tables import list_markdown
from spectrax.run import analyze, collect
from tests.conftest import CHECKPOINTS


def _rows(inputs, key, options):
    q = np.asarray(inputs.params["attn"]["q"][0], np.float64)  # (H, D, E)
    return LayerOutput({"q_norm": np.linalg.norm(q, axis=(-2, -1))}, {"largest": np.array(np.abs(q).max())})


@dataclasses.dataclass(frozen=True)
class NormSummary:
    mean: float
    largest: float

    def to_json(self):
        return {"mean": self.mean, "largest": self.largest}


def _summarize(tables, spec, options):
    largest = max(float(a["largest"]) for a in tables.arrays["q_norm"].values())
    return NormSummary(float(np.mean(tables.heads["q_norm"])), largest)


def _render(summary):
    return Section(f"## Query norms\n\n{list_markdown({'mean': [summary.mean]})}\n",
                   tables={"q_norms.csv": {"mean": np.array([summary.mean])}})


Q_NORM = Analysis(name="q_norm", table="heads", layer_rows=_rows, summarize=_summarize, render=_render, key_id=99,
                  headline=("q_norm",))


def test_an_unregistered_analysis_runs_through_collect_and_analyze(tmp_path):
    assert "q_norm" not in ANALYSES
    model = sx.load(CHECKPOINTS / "gpt2")
    q = np.concatenate([np.asarray(g["attn"]["q"], np.float64) for g in model.params["layers"]])  # (L, H, D, E)
    tables = collect(CHECKPOINTS / "gpt2", analyses=[Q_NORM], progress=False)
    np.testing.assert_allclose(tables.heads["q_norm"], np.linalg.norm(q, axis=(-2, -1)).ravel(), rtol=1e-12)
    L, H = q.shape[:2]
    assert tables.heads["layer"].tolist() == np.repeat(np.arange(L), H).tolist()
    assert tables.heads["head"].tolist() == np.tile(np.arange(H), L).tolist()
    assert tables.matrices is None and set(tables.arrays) == {"q_norm"}

    out = analyze(CHECKPOINTS / "gpt2", tmp_path / "out", analyses=[Q_NORM], progress=False)
    summary = json.loads(pathlib.Path(out, "summary.json").read_text())
    assert summary["analyses"] == ["q_norm"]
    assert summary["q_norm"]["mean"] == pytest.approx(np.linalg.norm(q, axis=(-2, -1)).mean())
    assert summary["q_norm"]["largest"] == pytest.approx(np.abs(q).max())
    report = pathlib.Path(out, "report.md").read_text()
    assert "## Query norms" in report and "`layers.csv`" in report
    assert {"heads.csv", "layers.csv", "groups.csv", "q_norms.csv"} <= set(os.listdir(out))


def test_resolve_orders_names_and_values():
    assert [a.name for a in resolve(["esd", "laws"])] == ["laws", "esd"]
    assert [a.name for a in resolve([Q_NORM, "rank"])] == ["rank", "q_norm"]
    with pytest.raises(ValueError, match=r"unknown analyses \['nope'\]; available: laws, rank, kernel, esd"):
        resolve(["laws", "nope"])
    with pytest.raises(ValueError, match="unknown analyses"):
        resolve([])


def test_a_run_streams_the_parts_its_analyses_read():
    assert registry.layer_parts(registry.resolve(["laws"])) == ("attn",)
    assert registry.layer_parts(registry.resolve(["laws", "charge"])) == ("attn",)
    assert registry.layer_parts(registry.resolve(registry.DEFAULT)) == ("attn", "mlp")
    mine = registry.ANALYSES["laws"]._replace(name="mine", reads=sx.io.LAYER_PARTS)  # the default: every part
    assert registry.layer_parts(registry.resolve(["laws", mine])) == ("attn", "mlp", "norms")
