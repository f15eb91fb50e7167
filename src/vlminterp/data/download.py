"""Download the COCO 2017 annotations and only the images a selection needs, resumably.

    from vlminterp.data.download import CocoDownloadSpec, download_annotations, download_images
    spec = CocoDownloadSpec()                                   # official hosts, train + val
    paths = download_annotations(spec, Path("data/coco"))
    # -> {"instances_train2017": data/coco/annotations/instances_train2017.json, ...}
    report = download_images(spec, {"train": [139, 285]}, Path("data/coco"))
    # -> data/coco/images/train2017/000000000139.jpg, ...; report.rows: one dict per image

Sources (the layout of https://cocodataset.org/#download):
    {annotations_base_url}/annotations/annotations_trainval2017.zip   (252,907,541 bytes, MD5 below)
    {images_base_url}/{split}2017/{file_name}                         e.g. train2017/000000000139.jpg

Every file is fetched into ``<name>.part``, checked, fsynced and only then renamed, so a final
name never holds a partial file. An interrupted transfer resumes from the ``.part`` with an HTTP
``Range`` request (and restarts from zero if the server ignores it). Transient failures (connection
drops, timeouts, HTTP 408/429/5xx, a body shorter than its ``Content-Length``, a file that fails
its check) are retried with exponential backoff; permanent ones (other 4xx, such as 404) are not.

Images: ``download_images`` keeps going after an image fails and raises one
``CocoDownloadError`` at the end that lists every failure (split, image id, URL, reason), so one
missing file never costs a rerun of all the others; the error carries the full report. Images
already on disk are re-checked (PIL verify + full decode) and fetched again when corrupt.
Limitation: a JPEG garbled in the middle of its entropy-coded data may still decode, so only
truncated files and broken headers are caught on disk (COCO publishes no per-image checksums).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import requests
import urllib3

from vlminterp.io import atomic_path

log = logging.getLogger(__name__)

OFFICIAL_BASE_URL = "http://images.cocodataset.org"
#: Size and MD5 of the official annotations_trainval2017.zip.
OFFICIAL_ANNOTATIONS_SIZE = 252_907_541
OFFICIAL_ANNOTATIONS_MD5 = "f4bbac642086de4f52a3fdda2de5fa2c"

KNOWN_SPLITS = ("train", "val")
KNOWN_KINDS = ("instances", "captions", "person_keypoints")
_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class CocoDownloadError(RuntimeError):
    """An expected download failure, with a message naming the file, URL and (for images) id.

    ``failures`` lists one dict per failed file; ``report`` is the full ``DownloadReport`` when
    raised by ``download_images``.
    """

    def __init__(self, message: str, failures: list[dict[str, Any]] | None = None,
                 report: "DownloadReport | None" = None) -> None:
        super().__init__(message)
        self.failures = failures or []
        self.report = report


@dataclass(frozen=True)
class CocoDownloadSpec:
    """Where COCO comes from, where it goes, and how hard to try.

    Attributes:
        annotations_base_url: host serving ``annotations_archive``.
        images_base_url: host serving ``{split}{year}/{file_name}``.
        year: COCO release, "2017".
        splits: splits whose annotations are extracted and whose images may be requested.
        annotation_kinds: which JSON files to extract from the archive, per split
            (``{kind}_{split}{year}.json``); the rest of the archive is ignored.
        annotations_archive: path of the archive under ``annotations_base_url``.
        annotations_size: expected archive size in bytes, or None to skip the check.
        annotations_md5: expected archive MD5 (hex), or None to skip the check.
        annotations_dir: destination of the JSON files, relative to ``dest_dir``.
        archive_dir: where the archive (and its ``.part``) is kept, relative to ``dest_dir``.
        keep_archive: keep the archive after extraction (else it is deleted once extracted).
        images_dir: destination of images, relative to ``dest_dir``; ``{split}`` and ``{year}``
            are filled in.
        retries: extra attempts per file after the first (0 = try once).
        backoff_base_s: delay before the first retry; doubles with every further retry.
        backoff_max_s: cap on one delay (also caps a server's ``Retry-After``).
        jitter: each delay is scaled by a factor drawn uniformly from [1 - jitter, 1], from a
            ``random.Random(seed)``; 0 gives exact delays.
        seed: seed of the jitter stream.
        timeout_s: connect and read timeout of each request.
        chunk_size: bytes per read while streaming.
        verify_images: check each image with PIL (``verify()`` then a full ``load()``).
        verify_existing: re-check images already on disk before skipping them.
        user_agent: the ``User-Agent`` header sent.
    """

    annotations_base_url: str = OFFICIAL_BASE_URL
    images_base_url: str = OFFICIAL_BASE_URL
    year: str = "2017"
    splits: tuple[str, ...] = KNOWN_SPLITS
    annotation_kinds: tuple[str, ...] = ("instances", "captions")
    annotations_archive: str = "annotations/annotations_trainval2017.zip"
    annotations_size: int | None = OFFICIAL_ANNOTATIONS_SIZE
    annotations_md5: str | None = OFFICIAL_ANNOTATIONS_MD5
    annotations_dir: str = "annotations"
    archive_dir: str = "archives"
    keep_archive: bool = True
    images_dir: str = "images/{split}{year}"
    retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    jitter: float = 0.25
    seed: int = 0
    timeout_s: float = 60.0
    chunk_size: int = 1 << 16
    verify_images: bool = True
    verify_existing: bool = True
    user_agent: str = "vlminterp-coco-download/0.1"

    @classmethod
    def from_config(cls, coco: dict) -> "CocoDownloadSpec":
        """The spec of a run's `dataset.coco` config section (hosts, expected archive, retries)."""
        return cls(annotations_base_url=coco["annotations_base_url"], images_base_url=coco["images_base_url"],
                   annotations_size=coco["annotations_size"], annotations_md5=coco["annotations_md5"],
                   retries=coco["retries"])

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", tuple(self.splits))
        object.__setattr__(self, "annotation_kinds", tuple(self.annotation_kinds))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        def fail(name: str, message: str) -> None:
            raise ValueError(f"CocoDownloadSpec.{name}: {message}")

        for name in ("annotations_base_url", "images_base_url"):
            if not re.match(r"^https?://[^/]+", getattr(self, name)):
                fail(name, f"must be an http(s) URL, got {getattr(self, name)!r}")
        if not self.splits:
            fail("splits", "must name at least one split")
        for split in self.splits:
            if split not in KNOWN_SPLITS:
                fail("splits", f"unknown split {split!r}; expected some of {KNOWN_SPLITS}")
        for kind in self.annotation_kinds:
            if kind not in KNOWN_KINDS:
                fail("annotation_kinds", f"unknown kind {kind!r}; expected some of {KNOWN_KINDS}")
        if self.annotations_size is not None and self.annotations_size <= 0:
            fail("annotations_size", "must be positive or None")
        if self.annotations_md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", self.annotations_md5):
            fail("annotations_md5", f"must be 32 hex digits or None, got {self.annotations_md5!r}")
        if self.retries < 0:
            fail("retries", "must be >= 0")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            fail("backoff_base_s", "backoff delays must be >= 0")
        if not 0 <= self.jitter <= 1:
            fail("jitter", "must be in [0, 1]")
        if self.timeout_s <= 0:
            fail("timeout_s", "must be positive")
        if self.chunk_size <= 0:
            fail("chunk_size", "must be positive")
        if "{split}" not in self.images_dir:
            fail("images_dir", "must contain '{split}' so splits do not collide")

    # --- URLs and paths -----------------------------------------------------------------------
    def annotations_url(self) -> str:
        return f"{self.annotations_base_url.rstrip('/')}/{self.annotations_archive.lstrip('/')}"

    def image_url(self, split: str, file_name: str) -> str:
        return f"{self.images_base_url.rstrip('/')}/{split}{self.year}/{file_name}"

    def annotation_name(self, kind: str, split: str) -> str:
        """File name of one annotation JSON, e.g. ``instances_train2017.json``."""
        return f"{kind}_{split}{self.year}.json"

    def annotation_path(self, dest_dir: str | os.PathLike, kind: str, split: str) -> Path:
        return Path(dest_dir) / self.annotations_dir / self.annotation_name(kind, split)

    def image_path(self, dest_dir: str | os.PathLike, split: str, file_name: str) -> Path:
        return Path(dest_dir) / self.images_dir.format(split=split, year=self.year) / file_name

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def coco_file_name(image_id: int) -> str:
    """COCO's image file name for an id: 139 -> ``000000000139.jpg``."""
    return f"{int(image_id):012d}.jpg"


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
@dataclass
class DownloadReport:
    """One row per requested image: split, image_id, file_name, url, path, status
    ("downloaded" | "skipped" | "failed"), resumed, attempts, bytes, error."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(row["status"] == status for row in self.rows)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["status"] == "failed"]

    def summary(self) -> dict[str, int]:
        return {"requested": len(self.rows), "downloaded": self.count("downloaded"),
                "skipped": self.count("skipped"), "failed": self.count("failed"),
                "resumed": sum(bool(r["resumed"]) for r in self.rows),
                "retries": sum(max(r["attempts"] - 1, 0) for r in self.rows),
                "bytes": sum(r["bytes"] for r in self.rows)}


# ----------------------------------------------------------------------------------------------
# Fetching one file
# ----------------------------------------------------------------------------------------------
class _Transient(Exception):
    """Worth another attempt. ``keep_part`` says whether the .part is a valid prefix to resume."""

    def __init__(self, message: str, keep_part: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.keep_part = keep_part
        self.retry_after = retry_after
        self.attempts = 0  # set by _Fetcher.fetch when it gives up


class _Permanent(Exception):
    """Retrying cannot help (404, 403, ...)."""

    attempts = 0


@dataclass
class _FetchResult:
    attempts: int
    bytes: int
    resumed: bool


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform lets a directory be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes 10-99/100`` -> (10, 99, 100); ``bytes */100`` -> (None, None, 100)."""
    if not value:
        return None, None, None
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value)
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (int(start) if start else None, int(end) if end else None,
            int(total) if total and total != "*" else None)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


class _Fetcher:
    """Streams URLs into files with resume, retries and a check; shared by both entry points."""

    def __init__(self, spec: CocoDownloadSpec, session: requests.Session | None,
                 sleep: Callable[[float], None]) -> None:
        self.spec = spec
        self._owns_session = session is None
        self.session = session or requests.Session()
        self.sleep = sleep
        self.rng = random.Random(spec.seed)
        self.bytes_received = 0  # over every response, broken ones included

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def delay(self, retry_index: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry_index`` (0-based)."""
        spec = self.spec
        base = min(spec.backoff_max_s, spec.backoff_base_s * (2 ** retry_index))
        if spec.jitter:
            base *= self.rng.uniform(1.0 - spec.jitter, 1.0)
        if retry_after is not None:
            base = max(base, min(retry_after, spec.backoff_max_s))
        return base

    def fetch(self, url: str, final: Path, check: Callable[[Path], None],
              on_bytes: Callable[[int], None] | None = None) -> _FetchResult:
        """Download ``url`` to ``final`` via ``final.part``; raise ``_Permanent`` or ``_Transient``
        (the last error, once attempts run out)."""
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(final.name + ".part")
        start_bytes, resumed = self.bytes_received, False
        last: _Transient | None = None
        for attempt in range(self.spec.retries + 1):
            if attempt:
                self.sleep(self.delay(attempt - 1, last.retry_after if last else None))
            try:
                was_resumed = self._stream(url, part, on_bytes)
                resumed = resumed or was_resumed
                try:
                    check(part)
                except Exception as exc:  # a check failed: the bytes are bad, start over
                    raise _Transient(f"downloaded file failed its check: {exc}", keep_part=False) from None
            except _Transient as exc:
                last = exc
                if not exc.keep_part:
                    part.unlink(missing_ok=True)
                continue
            except _Permanent as exc:
                exc.attempts = attempt + 1
                raise
            os.replace(part, final)
            _fsync_dir(final.parent)
            return _FetchResult(attempts=attempt + 1, bytes=self.bytes_received - start_bytes, resumed=resumed)
        assert last is not None
        error = _Transient(f"gave up after {self.spec.retries + 1} attempts; last error: {last}",
                           keep_part=last.keep_part)
        error.attempts = self.spec.retries + 1
        raise error

    def _stream(self, url: str, part: Path, on_bytes: Callable[[int], None] | None) -> bool:
        """One request: append to (or restart) ``part``. Returns whether it resumed a prefix."""
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": self.spec.user_agent, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = self.session.get(url, headers=headers, stream=True, timeout=self.spec.timeout_s)
        except requests.exceptions.RequestException as exc:
            raise _Transient(f"request failed: {exc.__class__.__name__}: {exc}") from None
        with response:
            status = response.status_code
            if status == 416 and offset:
                # Our .part may already hold the whole file (e.g. a previous body was complete
                # but the connection closed early); the server says how long the file is.
                _, _, total = _parse_content_range(response.headers.get("Content-Range"))
                if total is not None and total == offset:
                    return True
                raise _Transient(f"server refused Range bytes={offset}- (HTTP 416); restarting", keep_part=False)
            if status in _RETRYABLE_STATUS:
                raise _Transient(f"HTTP {status} {response.reason}", retry_after=_retry_after(response))
            if status not in (200, 206):
                raise _Permanent(f"HTTP {status} {response.reason}")
            resumed = False
            if status == 206:
                start, _, _ = _parse_content_range(response.headers.get("Content-Range"))
                if start != offset:
                    raise _Transient(f"server answered Range bytes={offset}- with Content-Range "
                                     f"{response.headers.get('Content-Range')!r}; restarting", keep_part=False)
                resumed = offset > 0
                mode = "ab"
            else:  # 200: full body, whether or not we asked for a range
                mode = "wb"
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise _Transient(f"server sent Content-Encoding {encoding!r} despite Accept-Encoding: identity")
            expected = response.headers.get("Content-Length")
            expected_n = int(expected) if expected and expected.isdigit() else None
            received, broken = 0, None
            with open(part, mode) as out:
                while True:
                    # read1 hands over every byte that arrived, even when the connection then
                    # breaks, so a resume starts exactly where the data stopped.
                    try:
                        chunk = response.raw.read1(self.spec.chunk_size, decode_content=False)
                    except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
                        broken = exc
                        break
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    self.bytes_received += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if broken is not None:
                detail = f" of {expected_n}" if expected_n is not None else ""
                raise _Transient(f"connection broken after {received}{detail} bytes "
                                 f"(body shorter than Content-Length, or dropped: {broken.__class__.__name__})")
            if expected_n is not None and received != expected_n:
                raise _Transient(f"Content-Length mismatch: header said {expected_n} bytes, received {received}",
                                 keep_part=received < expected_n)
            return resumed


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------
def check_image(path: Path) -> None:
    """Raise ``ValueError`` if ``path`` is not a complete, decodable image: PIL ``verify()`` then a
    full load. Temporarily clears PIL's global ``LOAD_TRUNCATED_IMAGES`` (not thread-safe)."""
    from PIL import Image, ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, whatever others set
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except Exception as exc:
        raise ValueError(f"{path.name} is not a valid image ({exc.__class__.__name__}: {exc})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _check_archive(spec: CocoDownloadSpec, path: Path) -> None:
    check_file(path, spec.annotations_size, None, check_content=_check_zip, md5=spec.annotations_md5)


def _check_zip(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path.name} is not a zip archive")


def _looks_like_complete_json(path: Path) -> bool:
    """Cheap check that a JSON file was written whole: starts with '{' and ends with '}'."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(64).lstrip()
            handle.seek(max(size - 64, 0))
            tail = handle.read().rstrip()
    except OSError:
        return False
    return head[:1] == b"{" and tail[-1:] == b"}"


# ----------------------------------------------------------------------------------------------
# Annotations
# ----------------------------------------------------------------------------------------------
def download_annotations(spec: CocoDownloadSpec, dest_dir: str | os.PathLike, *, progress: bool = True,
                         session: requests.Session | None = None,
                         sleep: Callable[[float], None] = time.sleep) -> dict[str, Path]:
    """Fetch the annotations archive and extract the needed JSON files into ``dest_dir/annotations``.

    Returns ``{"instances_train2017": path, ...}`` for every kind x split of the spec. Does
    nothing when those files already exist whole. The archive download resumes from its
    ``.part``; the archive is checked (zip structure, and size/MD5 when the spec gives them) and
    each member's CRC is checked while it is extracted. Raises ``CocoDownloadError``.
    """
    dest_dir = Path(dest_dir)
    wanted = {f"{kind}_{split}{spec.year}": spec.annotation_path(dest_dir, kind, split)
              for kind in spec.annotation_kinds for split in spec.splits}
    if all(path.is_file() and _looks_like_complete_json(path) for path in wanted.values()):
        return wanted

    url = spec.annotations_url()
    archive = dest_dir / spec.archive_dir / Path(spec.annotations_archive).name
    if archive.exists():
        try:
            _check_archive(spec, archive)
        except (ValueError, OSError):
            archive.unlink()  # corrupt or stale: fetch it again
    if not archive.exists():
        from tqdm import tqdm

        fetcher = _Fetcher(spec, session, sleep)
        bar = tqdm(total=spec.annotations_size, unit="B", unit_scale=True, desc=archive.name, disable=not progress)
        try:
            fetcher.fetch(url, archive, lambda p: _check_archive(spec, p), on_bytes=bar.update)
        except (_Permanent, _Transient) as exc:
            raise CocoDownloadError(f"could not download the COCO annotations archive from {url}: {exc}",
                                    failures=[{"url": url, "path": str(archive), "error": str(exc)}]) from None
        finally:
            bar.close()
            fetcher.close()

    try:
        with zipfile.ZipFile(archive) as bundle:
            names = set(bundle.namelist())
            for stem, target in wanted.items():
                member = next((n for n in (f"annotations/{stem}.json", f"{stem}.json") if n in names), None)
                if member is None:
                    raise CocoDownloadError(f"{archive} (from {url}) has no member annotations/{stem}.json")
                with atomic_path(target) as tmp:
                    with bundle.open(member) as source, open(tmp, "wb") as out:
                        shutil.copyfileobj(source, out, length=1 << 20)  # raises on a bad CRC
                        out.flush()
                        os.fsync(out.fileno())
    except zipfile.BadZipFile as exc:
        archive.unlink(missing_ok=True)
        raise CocoDownloadError(f"{archive} (from {url}) is corrupt ({exc}); it was deleted, rerun to fetch it again") from None
    _fsync_dir(dest_dir / spec.annotations_dir)
    if not spec.keep_archive:
        archive.unlink(missing_ok=True)
    return wanted


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class _ImageJob:
    split: str
    file_name: str
    image_id: int | None


def _normalise_split(split: Any, year: str) -> str:
    split = str(split)
    return split[: -len(year)] if split.endswith(year) else split


def _job(split: str, item: Any) -> _ImageJob:
    if isinstance(item, str) and not item.strip().isdigit():
        stem = Path(item).stem
        return _ImageJob(split, item, int(stem) if stem.isdigit() else None)
    image_id = int(item)
    return _ImageJob(split, coco_file_name(image_id), image_id)


def _jobs_from_selection(spec: CocoDownloadSpec, selection: Any) -> list[_ImageJob]:
    """Accept ``{split: [image ids or file names]}`` or a table with a ``split`` column and an
    ``image_id`` and/or ``file_name`` column (split values "train" or "train2017")."""
    jobs: set[_ImageJob] = set()
    if hasattr(selection, "columns"):  # a pandas DataFrame
        columns = set(selection.columns)
        if "split" not in columns or not ({"image_id", "file_name"} & columns):
            raise CocoDownloadError("selection table needs a 'split' column and an 'image_id' or 'file_name' "
                                    f"column; it has {sorted(columns)}")
        key = "file_name" if "file_name" in columns else "image_id"
        for split, item, image_id in zip(selection["split"], selection[key],
                                         selection["image_id"] if "image_id" in columns else [None] * len(selection)):
            job = _job(_normalise_split(split, spec.year), item)
            if image_id is not None and job.image_id is None:
                job = dataclasses.replace(job, image_id=int(image_id))
            jobs.add(job)
    elif isinstance(selection, Mapping):
        for split, items in selection.items():
            for item in items:
                jobs.add(_job(_normalise_split(split, spec.year), item))
    else:
        raise CocoDownloadError(f"selection must be a mapping split -> image ids/file names or a table, "
                                f"got {type(selection).__name__}")
    for job in jobs:
        if job.split not in spec.splits:
            raise CocoDownloadError(f"selection asks for split {job.split!r} (image {job.file_name}), "
                                    f"which is not in the spec's splits {spec.splits}")
        if "/" in job.file_name or "\\" in job.file_name or job.file_name in ("", ".", ".."):
            raise CocoDownloadError(f"image file name {job.file_name!r} must be a bare file name")
    return sorted(jobs)


def download_images(spec: CocoDownloadSpec, selection: Mapping[str, Iterable[int | str]] | Any,
                    dest_dir: str | os.PathLike, progress: bool = True, *,
                    session: requests.Session | None = None,
                    sleep: Callable[[float], None] = time.sleep) -> DownloadReport:
    """Fetch the selected images to ``dest_dir/images/{split}2017/``, one by one.

    ``selection``: ``{"train": [139, "000000000285.jpg", ...]}`` (ids or COCO file names) or a
    table with ``split`` and ``image_id``/``file_name`` columns. Images already present and valid
    are skipped (``verify_existing``); corrupt ones are fetched again. Each download is checked
    (HTTP status, Content-Length, PIL decode) and retried with backoff. Failures do not stop the
    run: once every other image is done, one ``CocoDownloadError`` lists them all (its ``report``
    holds every row). ``sleep`` is injectable so tests never wait.
    """
    from tqdm import tqdm

    dest_dir = Path(dest_dir)
    jobs = _jobs_from_selection(spec, selection)
    fetcher = _Fetcher(spec, session, sleep)
    check = check_image if spec.verify_images else (lambda path: None)
    report = DownloadReport()
    bar = tqdm(total=len(jobs), unit="img", desc="COCO images", disable=not progress)
    try:
        for job in jobs:
            url = spec.image_url(job.split, job.file_name)
            path = spec.image_path(dest_dir, job.split, job.file_name)
            row: dict[str, Any] = {"split": job.split, "image_id": job.image_id, "file_name": job.file_name,
                                   "url": url, "path": str(path), "status": "", "resumed": False,
                                   "attempts": 0, "bytes": 0, "error": ""}
            if path.is_file():
                try:
                    if spec.verify_existing:
                        check(path)
                    row["status"] = "skipped"
                except Exception:
                    path.unlink()  # corrupt on disk: fetch it again below
            if not row["status"]:
                try:
                    result = fetcher.fetch(url, path, check)
                    row.update(status="downloaded", attempts=result.attempts, bytes=result.bytes,
                               resumed=result.resumed)
                except (_Permanent, _Transient) as exc:
                    row.update(status="failed", attempts=exc.attempts, error=str(exc))
            report.rows.append(row)
            bar.update(1)
            if row["status"] == "failed":
                bar.set_postfix(failed=report.count("failed"))
    finally:
        bar.close()
        fetcher.close()
    if report.failures:
        lines = [f"  {r['split']} image {r['image_id'] if r['image_id'] is not None else '?'} "
                 f"({r['file_name']}) from {r['url']}: {r['error']}" for r in report.failures]
        raise CocoDownloadError(f"{len(lines)} of {len(jobs)} COCO images could not be downloaded "
                                f"(the other {len(jobs) - len(lines)} are in place):\n" + "\n".join(lines),
                                failures=report.failures, report=report)
    return report



# ----------------------------------------------------------------------------------------------
# Single files (small released data files, e.g. the authors' questions and mean vectors)
# ----------------------------------------------------------------------------------------------
DIGEST_NAMES = {"sha256": "SHA-256", "md5": "MD5"}


def _digest(path: Path, algorithm: str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, size: int | None, sha256: str | None, *, md5: str | None = None,
               check_content: Callable[[Path], None] | None = None) -> None:
    """Raise ValueError naming ``path`` when its size, its content check (cheap, before hashing) or
    its SHA-256 / MD5 differs from the expected one (None: not checked). The one verification of
    every download: COCO's annotation archive and the authors' files."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ValueError(f"{path.name} is {actual_size} bytes, expected {size}")
    if check_content is not None:
        check_content(path)
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is not None and (actual := _digest(path, algorithm)) != expected.lower():
            raise ValueError(f"{path.name} has {DIGEST_NAMES[algorithm]} {actual}, expected {expected}")


def download_file(url: str, dest: str | os.PathLike, *, size: int | None, sha256: str | None, retries: int = 5,
                  session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep) -> Path:
    """Fetch one file to ``dest`` with the COCO machinery (``.part`` resume, retries with backoff)
    and check its size and SHA-256; a file already at ``dest`` that passes the check is kept.
    Raises ``CocoDownloadError`` naming the URL when it cannot get a file that passes."""
    dest = Path(dest)
    if dest.is_file():
        try:
            check_file(dest, size, sha256)
            return dest
        except ValueError as exc:
            log.warning("%s: existing file fails its check (%s); downloading it again", dest, exc)
            dest.unlink()
    fetcher = _Fetcher(CocoDownloadSpec(retries=retries), session, sleep)
    try:
        fetcher.fetch(url, dest, lambda part: check_file(part, size, sha256))
    except (_Transient, _Permanent) as exc:
        raise CocoDownloadError(f"could not download {url} to {dest}: {exc}",
                                failures=[{"url": url, "path": str(dest), "error": str(exc)}]) from None
    finally:
        fetcher.close()
    return dest
