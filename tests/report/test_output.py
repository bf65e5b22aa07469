"""Result folders: atomic publication, refusal of existing folders, resume after an interruption."""

import json
import os
import pathlib

import numpy as np
import pytest

from spectrax.report.output import atomic_output_dir, run_folder


def test_atomic_folder_appears_only_on_success(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "out") as tmp:
            pathlib.Path(os.path.join(tmp, "a.txt")).write_text("x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with atomic_output_dir(tmp_path / "out") as tmp:
        pathlib.Path(os.path.join(tmp, "a.txt")).write_text("x")
    assert os.listdir(tmp_path / "out") == ["a.txt"]


def test_existing_folder_refused_unless_forced_and_replaced_only_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        with run_folder(out, settings={"a": 1}):
            pass
    with pytest.raises(RuntimeError):
        with run_folder(out, settings={"a": 1}, force=True) as folder:
            folder.save("p", {"g": {"x": np.arange(3)}})
            raise RuntimeError("interrupted")
    assert (out / "old.txt").read_text() == "old"  # a failed forced run leaves the old result alone
    with run_folder(out, settings={"a": 1}, force=True) as folder:
        assert folder.resumed == ("p",)
        pathlib.Path(os.path.join(folder.path, "new.txt")).write_text("new")
    assert sorted(os.listdir(out)) == ["new.txt"]
    assert [p for p in os.listdir(tmp_path) if p != "out"] == []


def test_parts_survive_an_interruption_and_are_read_back(tmp_path):
    out = tmp_path / "out"
    table = {"layer": np.array([3, 3]), "matrix": np.array(["attn.q", "mlp.up"], dtype=object), "x": np.array([0.5, np.nan])}
    with pytest.raises(KeyboardInterrupt):
        with run_folder(out, settings={"seed": 0}) as folder:
            folder.save("layer-00003", {"matrices": table})
            raise KeyboardInterrupt
    partial = tmp_path / ".out.partial"
    assert json.loads((partial / "run.json").read_text()) == {"seed": 0} and not out.exists()
    with pytest.raises(FileExistsError, match="differing in: seed"):
        with run_folder(out, settings={"seed": 1}):
            pass
    with run_folder(out, settings={"seed": 0}) as folder:
        assert folder.resumed == ("layer-00003",) and folder.has("layer-00003")
        back = folder.load("layer-00003")["matrices"]
        assert list(back["matrix"]) == ["attn.q", "mlp.up"] and back["matrix"].dtype == object
        np.testing.assert_array_equal(back["x"], table["x"])
        np.testing.assert_array_equal(back["layer"], table["layer"])
    assert os.listdir(out) == [] and not partial.exists()


def test_failure_before_any_part_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with run_folder(tmp_path / "out", settings={}):
            raise ValueError("bad input")
    assert os.listdir(tmp_path) == []


def test_output_inside_checkpoint_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(ValueError, match="inside the checkpoint"):
        with run_folder(ckpt / "res", settings={}, checkpoint=ckpt):
            pass
    assert os.listdir(ckpt) == []
