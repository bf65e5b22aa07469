"""Result folders: atomic publication, what `force` may replace, locking, resume after an interruption."""

import fcntl
import json
import os
import pathlib

import numpy as np
import pytest

from spectrax import __version__
from spectrax.run import store as output
from spectrax.run.store import MARKER, atomic_output_dir, check_output_path, run_folder


def _marked(folder):
    return json.loads((folder / MARKER).read_text())["files"]


def test_atomic_folder_appears_only_on_success_with_its_marker(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "out") as tmp:
            pathlib.Path(os.path.join(tmp, "a.txt")).write_text("x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with atomic_output_dir(tmp_path / "out") as tmp:
        os.makedirs(os.path.join(tmp, "plots"))
        pathlib.Path(os.path.join(tmp, "a.txt")).write_text("x")
        pathlib.Path(os.path.join(tmp, "plots", "b.png")).write_text("y")
    assert sorted(os.listdir(tmp_path / "out")) == sorted([MARKER, "a.txt", "plots"])
    assert _marked(tmp_path / "out") == ["a.txt", os.path.join("plots", "b.png")]


def test_existing_folder_refused_unless_forced_and_replaced_only_on_success(tmp_path):
    out = tmp_path / "out"
    with run_folder(out, settings={"a": 0}) as folder:
        pathlib.Path(os.path.join(folder.path, "old.txt")).write_text("old")
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
    assert sorted(os.listdir(out)) == [MARKER, "new.txt"]
    assert [p for p in os.listdir(tmp_path) if p != "out"] == []


def test_force_never_replaces_a_folder_spectrax_did_not_write(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match=f"not written by spectrax.*{MARKER}"):
        check_output_path(mine, force=True)
    with pytest.raises(FileExistsError, match="not written by spectrax"):
        with run_folder(mine, settings={}, force=True):
            pass
    assert os.listdir(mine) == ["thesis.tex"] and sorted(os.listdir(tmp_path)) == ["mine"]


def test_force_never_replaces_spectrax_output_a_user_added_to(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        pathlib.Path(os.path.join(tmp, "heads.csv")).write_text("x")
    (out / "notes.md").write_text("my notes")
    with pytest.raises(FileExistsError, match=r"files spectrax did not write \(notes.md\)"):
        check_output_path(out, force=True)
    # ...and also when the file appears while the run is going: checked again before the swap.
    (out / "notes.md").unlink()
    with pytest.raises(FileExistsError, match="notes.md"):
        with run_folder(out, settings={}, force=True) as folder:
            folder.save("p", {"g": {"x": np.arange(2)}})
            (out / "notes.md").write_text("my notes")
    assert (out / "notes.md").read_text() == "my notes"
    assert os.path.isdir(tmp_path / ".out.partial" / "parts")  # the finished work is kept for a rerun


@pytest.mark.parametrize("where", ["parent", "same", "cwd"])
def test_output_containing_the_checkpoint_is_refused_even_forced(tmp_path, monkeypatch, where):
    parent = tmp_path / "P"
    ckpt = parent / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"weights")
    out = {"parent": parent, "same": ckpt, "cwd": "."}[where]
    monkeypatch.chdir(parent)
    with pytest.raises(ValueError, match="contains the checkpoint|inside the checkpoint"):
        check_output_path(out, checkpoints=["ckpt"], force=True)
    assert (ckpt / "model.safetensors").read_bytes() == b"weights"


def test_output_inside_checkpoint_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(ValueError, match="inside the checkpoint"):
        with run_folder(ckpt / "res", settings={}, checkpoints=[ckpt]):
            pass
    assert os.listdir(ckpt) == []


def test_symbolic_link_and_unwritable_parent_refused_before_work(tmp_path, monkeypatch):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="symbolic link"):
        check_output_path(tmp_path / "dangling")
    monkeypatch.setattr(output.os, "access", lambda path, mode: False)  # as root, only a read-only mount says no
    with pytest.raises(ValueError, match="cannot write in"):
        check_output_path(tmp_path / "new" / "out")


def test_parts_survive_an_interruption_and_are_read_back(tmp_path):
    out = tmp_path / "out"
    table = {"layer": np.array([3, 3]), "matrix": np.array(["attn.q", "mlp.up"], dtype=object), "x": np.array([0.5, np.nan])}
    with pytest.raises(KeyboardInterrupt):
        with run_folder(out, settings={"seed": 0}) as folder:
            folder.save("layer-00003", {"matrices": table})
            raise KeyboardInterrupt
    partial = tmp_path / ".out.partial"
    assert json.loads((partial / "run.json").read_text()) == {"seed": 0, "spectrax": __version__} and not out.exists()
    assert output.count_parts(out) == 1
    with pytest.raises(FileExistsError, match="differing in: seed"):
        with run_folder(out, settings={"seed": 1}):
            pass
    # Parts another spectrax version wrote may differ in form: they are not resumed.
    (partial / "run.json").write_text(json.dumps({"seed": 0, "spectrax": "0.0.1"}))
    with pytest.raises(FileExistsError, match="differing in: spectrax"):
        with run_folder(out, settings={"seed": 0}):
            pass
    (partial / "run.json").write_text(json.dumps({"seed": 0, "spectrax": __version__}))
    with run_folder(out, settings={"seed": 0}) as folder:
        assert folder.resumed == ("layer-00003",) and folder.has("layer-00003")
        back = folder.load("layer-00003")["matrices"]
        assert list(back["matrix"]) == ["attn.q", "mlp.up"] and back["matrix"].dtype == object
        np.testing.assert_array_equal(back["x"], table["x"])
        np.testing.assert_array_equal(back["layer"], table["layer"])
    assert os.listdir(out) == [MARKER] and not partial.exists()


def test_damaged_part_is_named_discarded_and_recomputed(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with run_folder(out, settings={}) as folder:
            for name in ("a", "b"):
                folder.save(name, {"g": {"x": np.arange(1000)}})
            raise KeyboardInterrupt
    part = tmp_path / ".out.partial" / "parts" / "b.npz"
    part.write_bytes(part.read_bytes()[:-100])  # a torn copy, e.g. a disk that filled up
    with run_folder(out, settings={}) as folder:
        assert folder.resumed == ("a",) and folder.discarded == ("b",) and not folder.has("b")
        folder.save("b", {"g": {"x": np.arange(1000)}})
        np.testing.assert_array_equal(folder.load("b")["g"]["x"], np.arange(1000))


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "out"
    with run_folder(out, settings={}) as first:
        with pytest.raises(FileExistsError, match="another spectrax run is writing"):
            with run_folder(out, settings={}):
                pass
        first.save("p", {"g": {"x": np.arange(2)}})
    assert os.listdir(out) == [MARKER]


def test_lock_is_an_flock_another_process_sees(tmp_path):
    root = tmp_path / ".out.partial"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a concurrent spectrax process holds
    try:
        with pytest.raises(FileExistsError, match="another spectrax run"):
            with run_folder(tmp_path / "out", settings={}):
                pass
    finally:
        os.close(fd)


def test_partial_folder_with_foreign_files_is_never_discarded(tmp_path):
    root = tmp_path / ".out.partial"
    root.mkdir()
    (root / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="precious.txt"):
        with run_folder(tmp_path / "out", settings={}, force=True):
            pass
    assert (root / "precious.txt").read_text() == "x"


def test_failed_publish_leaves_a_resumable_partial(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileExistsError):
        with run_folder(out, settings={"s": 1}) as folder:
            folder.save("p", {"g": {"x": np.arange(2)}})
            out.symlink_to(tmp_path / "nowhere")  # appears while the run goes on
    out.unlink()
    with run_folder(out, settings={"s": 1}) as folder:
        assert folder.resumed == ("p",)


def test_failure_before_any_part_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with run_folder(tmp_path / "out", settings={}):
            raise ValueError("bad input")
    assert os.listdir(tmp_path) == []


def test_a_one_file_checkpoint_allows_a_new_folder_beside_it_but_never_replacing_it(tmp_path):
    model = tmp_path / "models" / "smol.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF")
    assert check_output_path(model.parent / "results", checkpoints=[model]) == str(model.parent / "results")
    with pytest.raises(ValueError, match="contains the checkpoint"):
        check_output_path(model.parent, checkpoints=[model], force=True)
