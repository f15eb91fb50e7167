"""A local stand-in for images.cocodataset.org, built from the shapes world or a real COCO subset,
with fault injection.

    mirror = build_mirror(tmp_dir / "mirror")            # COCO layout on disk (shapes world)
    mirror = build_mirror_from_coco(tmp_dir / "mirror", COCO_MINI)   # real COCO files, unchanged
    with MirrorServer(mirror.root) as server:            # http://127.0.0.1:<free port>
        server.inject("/train2017/000000000001.jpg", Fault("drop", after=700))
        ...  server.url, server.requests (what the client asked for)

On disk (and served at the same paths):
    annotations/annotations_trainval2017.zip   annotations/{instances,captions}_{train,val}2017.json
                                               plus an unrequested member (person_keypoints_val2017.json)
    {split}2017/{image_id:012d}.jpg            JPEGs converted from the shapes PNGs; the JSONs'
                                               ``file_name`` fields name them, as in COCO.

The server binds 127.0.0.1 only, answers single ``Range: bytes=a-`` / ``bytes=a-b`` requests
with 206 (416 past the end), and consumes injected faults one per request, in order:
    Fault("status", status=503, retry_after=0)   answer with that status and no body
    Fault("drop", after=N)                       promise the whole file, send N bytes, hang up
    Fault("lie_length", extra=K)                 declare Content-Length + K, send the body, hang up
    Fault("garbage")                             send random bytes of the file's length
    Fault("no_range")                            ignore the Range header (200, whole file)
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import socket
import threading
import zipfile
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

from vlminterp.data.shapes import SPLITS, ShapesWorldSpec, generate_world

ARCHIVE = "annotations/annotations_trainval2017.zip"
_ZIP_TIME = (2017, 9, 1, 0, 0, 0)


@dataclass
class Mirror:
    """A COCO-format mirror on disk. ``file_names[split]`` lists its images in id order."""

    root: Path
    file_names: dict[str, list[str]]
    archive_size: int
    archive_md5: str

    @property
    def archive(self) -> Path:
        return self.root / ARCHIVE

    def image(self, split: str, file_name: str) -> Path:
        return self.root / f"{split}2017" / file_name


def build_mirror(root: Path, spec: ShapesWorldSpec | None = None) -> Mirror:
    """Write a COCO-layout mirror of a tiny shapes world under ``root`` (deterministic)."""
    spec = spec or ShapesWorldSpec.tiny(n_train=6, n_val=3)
    root = Path(root)
    world = root / "_world"
    generate_world(spec, world)
    members: dict[str, bytes] = {}
    file_names: dict[str, list[str]] = {}
    for split in SPLITS:
        instances = json.loads((world / "annotations" / f"instances_{split}.json").read_text())
        captions = json.loads((world / "annotations" / f"captions_{split}.json").read_text())
        renamed = {}
        out_dir = root / f"{split}2017"
        out_dir.mkdir(parents=True, exist_ok=True)
        for image in instances["images"]:
            coco_name = f"{image['id']:012d}.jpg"
            with Image.open(world / "images" / split / image["file_name"]) as png:
                png.convert("RGB").save(out_dir / coco_name, format="JPEG", quality=90)
            renamed[image["file_name"]] = coco_name
        for table in (instances, captions):
            for image in table["images"]:
                image["file_name"] = renamed[image["file_name"]]
                image["coco_url"] = f"http://images.cocodataset.org/{split}2017/{image['file_name']}"
        file_names[split] = [image["file_name"] for image in instances["images"]]
        members[f"annotations/instances_{split}2017.json"] = json.dumps(instances).encode()
        members[f"annotations/captions_{split}2017.json"] = json.dumps(captions).encode()
    return _write_archive(root, members, file_names)


def build_mirror_from_coco(root: Path, coco_dir: Path) -> Mirror:
    """Lay out a real COCO 2017 subset (e.g. ../shared/fixtures/coco-mini: annotations/*.json,
    train2017/, val2017/) under ``root`` as images.cocodataset.org serves it: the annotation JSONs,
    unchanged, as members of annotations/annotations_trainval2017.zip, and {split}2017/<file_name>."""
    root, coco_dir = Path(root), Path(coco_dir)
    members: dict[str, bytes] = {}
    file_names: dict[str, list[str]] = {}
    for split in SPLITS:
        instances = coco_dir / "annotations" / f"instances_{split}2017.json"
        members[f"annotations/{instances.name}"] = instances.read_bytes()
        captions = coco_dir / "annotations" / f"captions_{split}2017.json"
        members[f"annotations/{captions.name}"] = captions.read_bytes()
        images = sorted(json.loads(instances.read_bytes())["images"], key=lambda image: image["id"])
        file_names[split] = [image["file_name"] for image in images]
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        for name in file_names[split]:
            shutil.copyfile(coco_dir / f"{split}2017" / name, root / f"{split}2017" / name)
    return _write_archive(root, members, file_names)


def _write_archive(root: Path, members: dict[str, bytes], file_names: dict[str, list[str]]) -> Mirror:
    """Zip `members` (plus one member nobody asks for) as the official annotation archive."""
    members = {**members, "annotations/person_keypoints_val2017.json": b'{"not": "requested"}'}
    archive = root / ARCHIVE
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            (archive.parent / Path(name).name).write_bytes(data)  # loose copies, for comparisons
            bundle.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), data, compress_type=zipfile.ZIP_DEFLATED)
    data = archive.read_bytes()
    return Mirror(root=root, file_names=file_names, archive_size=len(data),
                  archive_md5=hashlib.md5(data).hexdigest())


@dataclass
class Fault:
    """One injected misbehaviour; see the module docstring for the kinds."""

    kind: str
    status: int = 503
    retry_after: int | None = None
    after: int = 0
    extra: int = 100


@dataclass
class _State:
    root: Path
    faults: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: random.Random = field(default_factory=lambda: random.Random(0))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        state = self.state
        path = self.path.split("?", 1)[0]
        with state.lock:
            state.requests.append({"method": "GET", "path": path, "range": self.headers.get("Range")})
            fault = state.faults[path].popleft() if state.faults.get(path) else None
        target = (state.root / path.lstrip("/")).resolve()
        if fault and fault.kind == "status":
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return self._reply(fault.status, b"", extra)
        if state.root.resolve() not in target.parents or not target.is_file():
            return self._reply(404, b"not found\n", {"Content-Type": "text/plain"})
        data = target.read_bytes()
        if fault and fault.kind == "garbage":
            data = bytes(state.rng.randrange(256) for _ in range(len(data)))
        status, start, extra = 200, 0, {}
        requested = self.headers.get("Range")
        if requested and not (fault and fault.kind == "no_range"):
            first, _, last = requested.removeprefix("bytes=").partition("-")
            start = int(first)
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            if start >= len(data):
                return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            extra["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status, data = 206, data[start:end + 1]
        if fault and fault.kind == "drop":
            return self._reply(status, data[: fault.after], extra, declared=len(data), hang_up=True)
        if fault and fault.kind == "lie_length":
            return self._reply(status, data, extra, declared=len(data) + fault.extra, hang_up=True)
        self._reply(status, data, extra)

    def _reply(self, status: int, body: bytes, headers: dict[str, str], declared: int | None = None,
               hang_up: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if declared is None else declared))
        self.send_header("Accept-Ranges", "bytes")
        for key, value in headers.items():
            self.send_header(key, value)
        if hang_up:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if hang_up:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class MirrorServer:
    """Serve ``root`` on 127.0.0.1 (a free port) from a background thread; a context manager."""

    def __init__(self, root: Path) -> None:
        self.state = _State(root=Path(root))
        handler = type("MirrorHandler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def inject(self, path: str, *faults: Fault) -> None:
        """Queue faults for ``path`` (e.g. "/train2017/000000000001.jpg"), one per request."""
        with self.state.lock:
            self.state.faults[path].extend(faults)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return list(self.state.requests)

    def requests_for(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> "MirrorServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
