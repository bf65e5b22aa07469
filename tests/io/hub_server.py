"""A stand-in for the Hugging Face Hub on 127.0.0.1, in the Hub's URL layout, so huggingface_hub's
own download code runs against it (tests set `HF_ENDPOINT` to `FakeHub.endpoint`).

Routes, as huggingface_hub calls them:

    GET  /api/models/{org}/{name}[/revision/{rev}] model info: sha, siblings (with sizes)
    HEAD/GET /{org}/{name}/resolve/{rev}/{file}    small files: 200 with ETag, X-Repo-Commit,
                                                   Content-Length; .safetensors: 302 to the CDN
                                                   with X-Linked-Etag, X-Linked-Size, Location
    HEAD/GET {cdn}/cdn/{sha256}                     the blob, honouring Range (206)

The CDN is a second server, reached as `localhost` (another host, as on the real Hub, so
huggingface_hub treats the redirect as it treats a CDN's). Errors carry the Hub's `X-Error-Code`: RepoNotFound,
RevisionNotFound, EntryNotFound, GatedRepo (401 without the repo's token). `faults[file]` lists
what the next full downloads of a file get: "drop" (half the bytes, then the connection closes)
or "503". `log` records every request with the bytes under `watch` when it arrived.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import pathlib
import re
import threading
import urllib.parse

__all__ = ["FakeHub", "disk_usage"]


def disk_usage(folder: str | os.PathLike) -> int:
    """Bytes of every regular file under `folder` (symlinks not followed, so a cached file counts once)."""
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


@dataclasses.dataclass
class Repo:
    sha: str
    files: dict[str, bytes]
    token: str | None  # gated: only this bearer token may download


@dataclasses.dataclass
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    range: str | None
    file: str | None  # the repo file a CDN request serves
    watched_bytes: int | None


class FakeHub:
    def __init__(self, watch: str | os.PathLike | None = None):
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, tuple[str, bytes]] = {}  # sha256 -> (file name, bytes)
        self.faults: dict[str, list[str]] = {}
        self.log: list[Request] = []
        self.watch = watch
        self._lock = threading.Lock()
        self._hub = self._serve("hub")
        self._cdn = self._serve("cdn")
        self.endpoint = f"http://127.0.0.1:{self._hub.server_address[1]}"
        # Another host name, as the real CDN is: huggingface_hub keeps a redirect's own headers
        # (X-Linked-Etag, X-Linked-Size) instead of following it to another host.
        self.cdn = f"http://localhost:{self._cdn.server_address[1]}"

    def add(self, repo_id: str, folder: str | os.PathLike, *, names: list[str] | None = None,
            token: str | None = None) -> str:
        """Serve the files of `folder` (or `names` of them) as repo `repo_id`; returns its commit sha."""
        folder = pathlib.Path(folder)
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and (names is None or p.name in names)}
        sha = hashlib.sha1(repo_id.encode()).hexdigest()
        self.repos[repo_id] = Repo(sha, files, token)
        for name, data in files.items():
            if name.endswith(".safetensors"):
                self.blobs[hashlib.sha256(data).hexdigest()] = (name, data)
        return sha

    def downloads(self, suffix: str = ".safetensors") -> list[Request]:
        """Full downloads (CDN GETs without an end to their range) of files ending in `suffix`."""
        return [r for r in self.log if r.server == "cdn" and r.method == "GET" and r.file.endswith(suffix)
                and not (r.range and re.fullmatch(r"bytes=\d+-\d+", r.range))]

    def close(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def _serve(self, kind: str) -> http.server.ThreadingHTTPServer:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                self._route(body=False)

            def do_GET(self):
                self._route(body=True)

            def _route(self, body: bool):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                file = None
                if kind == "cdn" and path.startswith("/cdn/"):
                    file = hub.blobs.get(path[len("/cdn/"):], ("?", b""))[0]
                with hub._lock:
                    watched = disk_usage(hub.watch) if hub.watch and os.path.isdir(hub.watch) else None
                    hub.log.append(Request(kind, self.command, path, self.headers.get("Range"), file, watched))
                if kind == "cdn":
                    return self._blob(path, body)
                api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
                if api:
                    return self._info(api[1], api[2] or "main")
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if resolve:
                    return self._resolve(*resolve.groups(), body=body)
                self._error(404, "RepoNotFound")

            def _error(self, status: int, code: str, headers: dict | None = None):
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _repo(self, repo_id: str, revision: str) -> Repo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound")
                elif revision not in ("main", repo.sha):
                    self._error(404, "RevisionNotFound")
                    repo = None
                return repo

            def _info(self, repo_id: str, revision: str):
                repo = self._repo(repo_id, revision)
                if repo is None:
                    return
                siblings = [{"rfilename": n, "size": len(d), "blobId": _git_sha(d)} for n, d in repo.files.items()]
                payload = json.dumps({"id": repo_id, "sha": repo.sha, "gated": "manual" if repo.token else False,
                                      "private": False, "siblings": siblings}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _resolve(self, repo_id: str, revision: str, name: str, body: bool):
                repo = self._repo(repo_id, revision)
                if repo is None:
                    return
                if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
                    return self._error(401, "GatedRepo")
                data = repo.files.get(name)
                if data is None:
                    return self._error(404, "EntryNotFound", {"X-Repo-Commit": repo.sha})
                if name.endswith(".safetensors"):  # an LFS file: the Hub redirects to its CDN
                    digest = hashlib.sha256(data).hexdigest()
                    self.send_response(302)
                    self.send_header("Location", f"{hub.cdn}/cdn/{digest}")
                    self.send_header("X-Repo-Commit", repo.sha)
                    self.send_header("X-Linked-Etag", f'"{digest}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("ETag", f'"{_git_sha(data)}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", repo.sha)
                self.send_header("ETag", f'"{_git_sha(data)}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _blob(self, path: str, body: bool):
                digest = path[len("/cdn/"):]
                if digest not in hub.blobs:
                    return self._error(404, "EntryNotFound")
                name, data = hub.blobs[digest]
                start, end = 0, len(data) - 1
                ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if ranged:
                    start = int(ranged[1])
                    end = min(int(ranged[2]), end) if ranged[2] else end
                fault = None
                if body and not (ranged and ranged[2]):  # a download, not a header read
                    with hub._lock:
                        queue = hub.faults.get(name)
                        fault = queue.pop(0) if queue else None
                if fault == "503":
                    return self._error(503, "Unavailable")
                chunk = data[start:end + 1]
                self.send_response(206 if ranged else 200)
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{digest}"')
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if not body:
                    return
                if fault == "drop":  # half the body, then the connection goes away
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def _git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
