"""Hub repo ids against a real HTTP server in the Hub's URL layout (tests/io/hub_server.py).

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so everything
that downloads runs in a subprocess with those set; each script prints one JSON line of results.
A script marks a point in the server's request log by fetching `/marker/<name>`.
"""

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from spectrax.io.hub import parse_repo_id, parse_size
from tests.conftest import CHECKPOINTS
from tests.io.hub_server import FakeHub, disk_usage

SHARDED = CHECKPOINTS / "llama_sharded"
REPO = "spectrax-test/llama-sharded"
SHARDS = sorted(p.name for p in SHARDED.glob("*.safetensors"))
TOKEN = "hf_spectrax_test_token"


@pytest.fixture
def hub(tmp_path):
    server = FakeHub(watch=tmp_path / "hf" / "spectrax")
    server.add(REPO, SHARDED)
    server.add("spectrax-test/gated", CHECKPOINTS / "llama", token=TOKEN)
    server.add("spectrax-test/pickles", CHECKPOINTS / "llama", names=["config.json", "generation_config.json"])
    server.repos["spectrax-test/pickles"].files["pytorch_model.bin"] = b"\x80\x02 not really a pickle"
    yield server
    server.close()


def run(code: str, hub: FakeHub, tmp_path: pathlib.Path, **env: str):
    """Run `code` in a fresh interpreter pointed at `hub`, with an isolated HF_HOME; returns the
    JSON its last stdout line prints."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    environ.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", SPECTRAX_TEST_LOCAL=str(SHARDED), **env)
    prelude = textwrap.dedent(f"""
        import contextlib, io, json, os, urllib.request
        import numpy as np
        import jax
        import spectrax as sx
        from spectrax.cli import main
        import sys
        HUB_AT_IMPORT = "huggingface_hub" in sys.modules  # it must not be: it reads HF_* when imported
        def mark(name):
            try:
                urllib.request.urlopen({hub.endpoint!r} + "/marker/" + name)
            except Exception:
                pass
        def cli(*argv):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main(list(argv))
            return rc, err.getvalue().strip()
        def same(a, b):
            return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))
    """)
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=environ, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def split_at(hub: FakeHub, marker: str):
    """The server's log before and after the script's `mark(marker)`."""
    i = next(i for i, r in enumerate(hub.log) if r.path == f"/marker/{marker}")
    return hub.log[:i], hub.log[i + 1:]


def downloads(requests) -> list[str]:
    return [r.file for r in requests if r.server == "cdn" and r.method == "GET"
            and not (r.range and r.range.split("-")[1])]


def error_line(stderr: str) -> str:
    """The one error line `spectrax` printed (stderr may also hold progress bars)."""
    lines = re.findall(r"spectrax \w+: error: ([^\n]*)", stderr)
    assert len(lines) == 1, stderr
    return lines[0]


def test_repo_ids_sizes_and_local_paths_win(tmp_path, monkeypatch):
    assert parse_repo_id("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", None)
    assert parse_repo_id("meta-llama/Llama-3.1-8B@v1.0") == ("meta-llama/Llama-3.1-8B", "v1.0")
    for not_an_id in ("model", "a/b/c", "/abs/path", "./x/y", "org/name@", "org/ name"):
        assert parse_repo_id(not_an_id) is None, not_an_id
    (tmp_path / "Qwen" / "Qwen2.5-0.5B").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_repo_id("Qwen/Qwen2.5-0.5B") is None  # an existing local path always wins
    assert parse_size("20GB") == 20 * 10**9 and parse_size("1.5GiB") == 3 * 2**29 and parse_size(4096) == 4096
    assert parse_size("500 mb") == 5 * 10**8 and parse_size("110KB") == 110_000
    for bad in ("lots", "-1GB", "0", "12 parsecs"):
        with pytest.raises(ValueError, match="disk budget"):
            parse_size(bad)


def test_cold_download_then_offline_rerun_from_the_cache(tmp_path, hub):
    hub.faults[SHARDS[1]] = ["drop"]  # the connection goes away mid-file once
    cache = tmp_path / "hub-cache"  # HF_HUB_CACHE, away from HF_HOME's default
    online = run(f"""
        from huggingface_hub import constants
        constants.DOWNLOAD_CHUNK_SIZE = 4096  # written in 4 KB pieces, as it writes 10 MB ones
        info = sx.inspect({REPO!r})
        mark("inspected")
        last = list(sx.stream_layers({REPO!r}, layers=[1]))
        mark("layer1")
        local = list(sx.stream_layers(os.environ["SPECTRAX_TEST_LOCAL"]))
        remote = list(sx.stream_layers({REPO!r}))
        print(json.dumps({{"hub": info["hub"], "path": info["path"], "layers": [list(b.layer_ids) for b in remote],
                          "same": all(same(a.params, b.params) for a, b in zip(local, remote))
                                  and same(last[0].params, local[1].params)}}))
    """, hub, tmp_path, HF_HUB_CACHE=str(cache))
    sha = hub.repos[REPO].sha
    assert online["hub"] == {"repo": REPO, "revision": None, "sha": sha}
    assert online["path"] == str(cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / sha)
    assert online["same"] and online["layers"] == [[0], [1]]
    inspect_requests, stream_requests = split_at(hub, "inspected")
    assert downloads(inspect_requests) == []  # inspect reads headers (range requests), never weights
    assert {r.range for r in inspect_requests if r.server == "cdn"} == {"bytes=0-100000"}
    # Of the repo's files only config.json, the index and the weights are ever asked for
    # (generation_config.json, say, never is), and a layer downloads only the shards it spans.
    asked = {r.path.rpartition("/")[2] for r in hub.log if r.server == "hub" and "/resolve/" in r.path}
    assert asked == {"config.json", "model.safetensors.index.json", *SHARDS}
    assert downloads(split_at(hub, "layer1")[0][len(inspect_requests) + 1:]) == SHARDS[2:]
    assert sorted(set(downloads(stream_requests))) == SHARDS
    # huggingface_hub retries a dropped connection itself, from the last piece it wrote (a range
    # request from there); the run goes on and the file is whole.
    dropped, retried = [r.range for r in stream_requests if r.server == "cdn" and r.file == SHARDS[1]
                        and r.method == "GET" and not (r.range and r.range.split("-")[1])]
    resumed_at = int(retried.removeprefix("bytes=").removesuffix("-"))
    assert dropped is None and 0 < resumed_at < (SHARDED / SHARDS[1]).stat().st_size // 2 + 1
    snapshot = pathlib.Path(online["path"])
    for name in SHARDS:
        assert hashlib.sha256((snapshot / name).read_bytes()).digest() == hashlib.sha256((SHARDED / name).read_bytes()).digest()

    hub.log.clear()
    offline = run(f"""
        local = list(sx.stream_layers(os.environ["SPECTRAX_TEST_LOCAL"]))
        remote = list(sx.stream_layers({REPO!r}))
        pinned = sx.inspect({REPO!r} + "@" + {sha!r})["hub"]["sha"]
        print(json.dumps({{"same": all(same(a.params, b.params) for a, b in zip(local, remote)), "pinned": pinned,
                          "uncached": cli("inspect", "spectrax-test/gated")}}))
    """, hub, tmp_path, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    assert offline["same"] and offline["pinned"] == sha
    rc, err = offline["uncached"]
    assert rc == 2 and error_line(err).startswith("spectrax-test/gated: ")
    assert "HF_HUB_OFFLINE" in err and "hf download spectrax-test/gated" in err and str(cache) in err
    assert hub.log == []  # offline: not one request


def test_budgeted_streaming_keeps_disk_within_the_budget(tmp_path, hub):
    budget = 110_000  # two of the four ~52 KB shards; each layer and the globals span two shards
    out = run(f"""
        model = sx.load({REPO!r}, disk_budget={budget})
        mark("loaded")
        remote = list(sx.stream_layers({REPO!r}, disk_budget="{budget // 1000}KB"))
        mark("streamed")
        try:
            list(sx.stream_layers({REPO!r}, disk_budget=60_000))
            small = None
        except sx.CheckpointError as e:
            small = str(e)
        local = list(sx.stream_layers(os.environ["SPECTRAX_TEST_LOCAL"]))
        print(json.dumps({{"load": same(model.params, sx.load(os.environ["SPECTRAX_TEST_LOCAL"]).params),
                          "stream": all(same(a.params, b.params) for a, b in zip(local, remote)), "small": small}}))
    """, hub, tmp_path)
    assert out["load"] and out["stream"]
    sizes = {name: (SHARDED / name).stat().st_size for name in SHARDS}
    checked = [r for r in hub.log if r.file in sizes and r.method == "GET" and not (r.range and r.range.split("-")[1])]
    assert len(checked) >= 4
    for r in checked:  # the scratch folder's size when each shard download began, plus that shard
        assert r.watched_bytes is None or r.watched_bytes + sizes[r.file] <= budget, (r, budget)
    loading, after_load = split_at(hub, "loaded")
    streaming = after_load[: after_load.index(next(r for r in after_load if r.path == "/marker/streamed"))]
    refused = split_at(hub, "streamed")[1]
    # load reads globals (shards 1, 4), layer 0 (1, 2), layer 1 (3, 4): shard 4 is evicted for
    # shard 2 and fetched again, the farthest next use going first.
    assert downloads(loading) == [SHARDS[0], SHARDS[3], SHARDS[1], SHARDS[2], SHARDS[3]]
    assert downloads(streaming) == SHARDS
    assert downloads(refused) == []  # a budget no layer fits in is refused before any download
    assert "60.0 KB" in out["small"] and REPO in out["small"] and "--disk-budget" in out["small"]
    assert not list((tmp_path / "hf").rglob("*.safetensors"))  # everything downloaded was deleted
    assert disk_usage(tmp_path / "hf" / "hub") < 5_000  # the Hugging Face cache holds config and index only


def test_errors_are_one_line_naming_the_id(tmp_path, hub):
    out = run(f"""
        results = {{
            "missing": cli("inspect", "spectrax-test/nope"),
            "revision": cli("inspect", {REPO!r} + "@v9"),
            "gated": cli("inspect", "spectrax-test/gated"),
            "pickles": cli("inspect", "spectrax-test/pickles"),
            "budget": cli("analyze", {REPO!r}, "--disk-budget", "60KB", "--out", "res"),
        }}
        os.environ["HF_TOKEN"] = "hf_someone_else"
        results["wrong_token"] = cli("inspect", "spectrax-test/gated")
        os.environ["HF_TOKEN"] = {TOKEN!r}
        results["with_token"] = cli("inspect", "spectrax-test/gated")
        results["hub_at_import"] = HUB_AT_IMPORT
        print(json.dumps(results))
    """, hub, tmp_path)
    expected = {
        "missing": ("spectrax-test/nope", "no repo spectrax-test/nope"),
        "revision": (f"{REPO}@v9", "no revision 'v9'"),
        "gated": ("spectrax-test/gated", "HF_TOKEN is not set"),
        "wrong_token": ("spectrax-test/gated", "the token given has no access"),
        "pickles": ("spectrax-test/pickles", "no safetensors weights in the repo (it holds pytorch_model.bin)"),
        "budget": (REPO, "more than the disk budget of 60.0 KB"),
    }
    for case, (ref, words) in expected.items():
        rc, err = out[case]
        assert rc == 2 and error_line(err).startswith(f"{ref}: ") and words in error_line(err), (case, err)
    assert out["with_token"] == [0, ""]
    assert out["hub_at_import"] is False  # importing spectrax (and its CLI) leaves huggingface_hub unimported
    assert not [f for f in downloads(hub.log) if f.startswith("model-")]  # the budget refused before downloading


@pytest.mark.slow
def test_budgeted_analyze_resumes_after_a_dropped_download(tmp_path, hub):
    hub.faults[SHARDS[2]] = ["drop", "503"]  # layer 1's first shard: dropped, and the retry refused
    argv = ["analyze", REPO, "--disk-budget", "110KB", "--analyses", "rank", "--crop", "16", "--null-draws", "2",
            "--shuffle-draws", "0", "--out", "res"]
    out = run(f"""
        first = cli(*{argv!r})
        mark("failed")
        second = cli(*{argv!r})
        mark("analyzed")
        compared = cli("compare", {REPO!r}, os.environ["SPECTRAX_TEST_LOCAL"], *{argv[2:-2]!r}, "--out", "cmp")
        print(json.dumps({{"first": first, "second": second, "compared": compared}}))
    """, hub, tmp_path)
    rc, err = out["first"]
    assert rc == 2 and error_line(err).startswith(f"{REPO}: ") and "rerun to resume" in err, err
    assert out["second"][0] == 0
    failed, resumed = split_at(hub, "failed")
    resumed = resumed[: next(i for i, r in enumerate(resumed) if r.path == "/marker/analyzed")]
    # globals (shards 1, 4), layer 0 (1, 2; 4 evicted), then layer 1's first shard: dropped, retry refused
    assert downloads(failed) == [SHARDS[0], SHARDS[3], SHARDS[1], SHARDS[2], SHARDS[2]]
    assert downloads(resumed) == [SHARDS[2], SHARDS[3]]  # only what layer 1 needs: finished layers are not fetched
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    sha = hub.repos[REPO].sha
    assert summary["hub"] == {"repo": REPO, "revision": None, "sha": sha} and summary["resumed_parts"] == 2
    assert sha in (tmp_path / "res" / "report.md").read_text()
    assert not list((tmp_path / "hf").rglob("*.safetensors"))
    # compare takes repo ids too (here against the local copy of the same weights), under the same budget
    assert out["compared"][0] == 0, out["compared"]
    compared = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert compared["hubs"] == [{"repo": REPO, "revision": None, "sha": sha}, None]
    assert json.loads((tmp_path / "cmp" / "a" / "summary.json").read_text())["hub"]["sha"] == sha
    assert f"Hub repo {REPO} at commit {sha}" in (tmp_path / "cmp" / "report.md").read_text()
    assert all(r.watched_bytes is None or r.watched_bytes <= 110_000 for r in split_at(hub, "analyzed")[1])
    assert not list((tmp_path / "hf").rglob("*.safetensors"))
