"""A local stand-in for huggingface.co serving one model repository at one pinned commit, for
huggingface_hub pointed at it through HF_ENDPOINT (the protocol its downloads use):

    GET  /api/models/<org>/<name>/revision/<rev>   repo info: sha, siblings (size; lfs sha256/size)
    GET  /api/models/<org>/<name>/tree/<rev>       the file list (recursive, one page)
    HEAD /<org>/<name>/resolve/<rev>/<file>        X-Repo-Commit, ETag (sha256 for large files),
    GET  /<org>/<name>/resolve/<rev>/<file>        Content-Length; GET answers Range with 206

    with HubServer(model_dir, "org/name", revision="v1") as hub:   # http://127.0.0.1:<port>
        hub.drop_after["model.safetensors"] = 1000   # next GET of it sends 1000 bytes, hangs up
        ... hub.requests (method, path, Range) ...

Every file counts as a large (LFS) file when its name ends in .safetensors or .bin, as on the hub.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class HubServer:
    def __init__(self, model_dir: Path, repo_id: str, revision: str = "main"):
        self.model_dir, self.repo_id, self.revision = Path(model_dir), repo_id, revision
        self.files = {p.relative_to(self.model_dir).as_posix(): p for p in sorted(self.model_dir.rglob("*"))
                      if p.is_file()}
        self.commit = hashlib.sha1(b"".join(p.read_bytes() for p in self.files.values())).hexdigest()
        self.sha256 = {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in self.files.items()}
        self.requests: list[tuple[str, str, str | None]] = []
        self.drop_after: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None

    @staticmethod
    def is_lfs(name: str) -> bool:
        return name.endswith((".safetensors", ".bin"))

    def info(self) -> dict:
        siblings = []
        for name, path in self.files.items():
            sibling = {"rfilename": name, "size": path.stat().st_size,
                       "blobId": hashlib.sha1(path.read_bytes()).hexdigest()}
            if self.is_lfs(name):
                sibling["lfs"] = {"sha256": self.sha256[name], "size": path.stat().st_size, "pointerSize": 130}
            siblings.append(sibling)
        return {"id": self.repo_id, "modelId": self.repo_id, "sha": self.commit, "private": False,
                "siblings": siblings, "tags": [], "downloads": 0, "likes": 0}

    def tree(self) -> list[dict]:
        entries = []
        for name, path in self.files.items():
            entry = {"type": "file", "path": name, "size": path.stat().st_size,
                     "oid": hashlib.sha1(path.read_bytes()).hexdigest()}
            if self.is_lfs(name):
                entry["lfs"] = {"oid": self.sha256[name], "size": path.stat().st_size, "pointerSize": 130}
            entries.append(entry)
        return entries

    def __enter__(self) -> "HubServer":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _revision_ok(self, revision: str) -> bool:
                return revision in (hub.revision, hub.commit)

            def _route(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                api = f"/api/models/{hub.repo_id}/revision/"
                if path.startswith(api) and self.command == "GET":
                    if not self._revision_ok(path[len(api):]):
                        return self._status(404, "Revision Not Found")
                    return self._json(hub.info())
                tree = f"/api/models/{hub.repo_id}/tree/"
                if path.startswith(tree) and self.command == "GET":
                    if not self._revision_ok(path[len(tree):].split("/")[0]):
                        return self._status(404, "Revision Not Found")
                    return self._json(hub.tree())
                prefix = f"/{hub.repo_id}/resolve/"
                if not path.startswith(prefix):
                    return self._status(404, "Repository Not Found")
                revision, _, name = path[len(prefix):].partition("/")
                if not self._revision_ok(revision):
                    return self._status(404, "Revision Not Found")
                if name not in hub.files:
                    return self._status(404, "Entry Not Found")
                data = hub.files[name].read_bytes()
                etag = hub.sha256[name] if hub.is_lfs(name) else hashlib.sha1(data).hexdigest()
                start, status = 0, 200
                requested = self.headers.get("Range")
                if requested and self.command == "GET" and requested.startswith("bytes="):
                    start = int(requested[len("bytes="):].split("-")[0])
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", f'"{etag}"')
                if hub.is_lfs(name):
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if self.command == "HEAD":
                    return None
                cut = hub.drop_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                return self.wfile.write(body)

            def _json(self, content):
                body = json.dumps(content).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return self.wfile.write(body)

            def _status(self, status: int, message: str):
                self.send_response(status)
                self.send_header("X-Error-Code", message.replace(" ", ""))
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _route

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
