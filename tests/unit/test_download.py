"""End-to-end tests of the COCO download against a local mirror served on 127.0.0.1.

The mirror (tests/coco_mirror.py) is a tiny shapes world in COCO's layout; the server injects
faults (dropped connections, 503s, garbage, lying Content-Length, ignored Range) and records
every request, so resumption and retries are checked from the server's side too.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests
from pycocotools.coco import COCO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the mirror helper

from coco_mirror import ARCHIVE, Fault, MirrorServer, build_mirror  # noqa: E402

from vlminterp.data.download import (  # noqa: E402
    OFFICIAL_ANNOTATIONS_MD5,
    OFFICIAL_ANNOTATIONS_SIZE,
    CocoDownloadError,
    CocoDownloadSpec,
    _Fetcher,
    check_image,
    coco_file_name,
    download_annotations,
    download_images,
)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    return build_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture
def server(mirror):
    srv = MirrorServer(mirror.root)
    yield srv
    srv.close()


@pytest.fixture
def session():
    with requests.Session() as s:
        s.trust_env = False  # never route 127.0.0.1 through a proxy from the environment
        yield s


@pytest.fixture
def spec(server):
    return CocoDownloadSpec(annotations_base_url=server.url, images_base_url=server.url,
                            annotations_size=None, annotations_md5=None, retries=3,
                            backoff_base_s=0.01, backoff_max_s=0.05, jitter=0.0, timeout_s=5.0,
                            chunk_size=256)


class Sleeps(list):
    """Stands in for time.sleep: records the delays, never waits."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _get(spec, selection, dest, session, sleep=None):
    return download_images(spec, selection, dest, progress=False, session=session, sleep=Sleeps() if sleep is None else sleep)


def _first(mirror, split="train"):
    name = mirror.file_names[split][0]
    return name, f"/{split}2017/{name}"


def _image_requests(server):
    return [r for r in server.requests if not r["path"].startswith("/annotations")]


# --- happy path -------------------------------------------------------------------------------
def test_full_download_is_byte_identical_and_loads_in_pycocotools(mirror, server, spec, session, tmp_path):
    spec = dataclasses.replace(spec, annotations_size=mirror.archive_size, annotations_md5=mirror.archive_md5)
    paths = download_annotations(spec, tmp_path, session=session, sleep=Sleeps())
    assert set(paths) == {f"{k}_{s}2017" for k in ("instances", "captions") for s in ("train", "val")}
    for stem, path in paths.items():
        assert path == tmp_path / "annotations" / f"{stem}.json"
        assert path.read_bytes() == (mirror.archive.parent / f"{stem}.json").read_bytes()
    assert not (tmp_path / "annotations" / "person_keypoints_val2017.json").exists()  # not requested
    assert (tmp_path / "archives" / "annotations_trainval2017.zip").read_bytes() == mirror.archive.read_bytes()

    coco = COCO(str(paths["instances_train2017"]))
    selection = {"train": [img["file_name"] for img in coco.loadImgs(coco.getImgIds())],
                 "val": mirror.file_names["val"]}
    report = _get(spec, selection, tmp_path, session)
    assert report.summary()["downloaded"] == len(mirror.file_names["train"]) + len(mirror.file_names["val"])
    assert report.summary()["failed"] == report.summary()["retries"] == 0
    for split, names in mirror.file_names.items():
        for name in names:
            got = tmp_path / "images" / f"{split}2017" / name
            assert got.read_bytes() == mirror.image(split, name).read_bytes()
    assert not list(tmp_path.rglob("*.part"))
    assert all(isinstance(row["image_id"], int) for row in report.rows)
    assert len(coco.getAnnIds()) > 0 and coco.loadImgs(1)[0]["file_name"] == coco_file_name(1)


def test_rerun_skips_everything_already_valid(mirror, server, spec, session, tmp_path, capsys):
    download_annotations(spec, tmp_path, session=session)
    _get(spec, mirror.file_names, tmp_path, session)
    before = len(server.requests)
    download_annotations(spec, tmp_path, session=session)
    report = download_images(spec, mirror.file_names, tmp_path, progress=True, session=session)
    assert len(server.requests) == before  # nothing fetched again
    assert report.count("skipped") == len(report.rows) > 0
    assert "COCO images" in capsys.readouterr().err  # the tqdm bar


def test_truncated_json_is_extracted_again_from_the_kept_archive(mirror, server, spec, session, tmp_path):
    paths = download_annotations(spec, tmp_path, session=session)
    target = paths["captions_val2017"]
    target.write_bytes(target.read_bytes()[:100])
    before = len(server.requests)
    download_annotations(spec, tmp_path, session=session)
    assert len(server.requests) == before  # the archive on disk was reused
    assert target.read_bytes() == (mirror.archive.parent / "captions_val2017.json").read_bytes()


def test_selection_as_table_with_ids_and_year_suffixed_splits(mirror, server, spec, session, tmp_path):
    table = pd.DataFrame({"split": ["train2017", "train", "val2017"], "image_id": [2, 2, 3]})
    report = _get(spec, table, tmp_path, session)
    assert sorted((r["split"], r["image_id"]) for r in report.rows) == [("train", 2), ("val", 3)]
    assert (tmp_path / "images/val2017/000000000003.jpg").read_bytes() == mirror.image("val", coco_file_name(3)).read_bytes()


# --- resumption --------------------------------------------------------------------------------
def test_dropped_connection_resumes_with_range(mirror, server, spec, session, tmp_path):
    name, path = _first(mirror)
    server.inject(path, Fault("drop", after=700))
    report = _get(spec, {"train": [name]}, tmp_path, session)
    row = report.rows[0]
    assert row["status"] == "downloaded" and row["resumed"] and row["attempts"] == 2
    assert row["bytes"] == mirror.image("train", name).stat().st_size  # 700 + the rest, nothing twice
    assert [r["range"] for r in server.requests_for(path)] == [None, "bytes=700-"]
    assert (tmp_path / "images/train2017" / name).read_bytes() == mirror.image("train", name).read_bytes()


def test_part_file_from_an_interrupted_run_is_resumed(mirror, server, spec, session, tmp_path):
    name, path = _first(mirror)
    data = mirror.image("train", name).read_bytes()
    part = tmp_path / "images/train2017" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    report = _get(spec, {"train": [name]}, tmp_path, session)
    assert server.requests_for(path)[0]["range"] == "bytes=1000-"
    assert report.rows[0]["resumed"] and report.rows[0]["bytes"] == len(data) - 1000
    assert (tmp_path / "images/train2017" / name).read_bytes() == data and not part.exists()


def test_server_ignoring_range_restarts_from_zero(mirror, server, spec, session, tmp_path):
    name, path = _first(mirror)
    data = mirror.image("train", name).read_bytes()
    part = tmp_path / "images/train2017" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from some other file" * 10)
    server.inject(path, Fault("no_range"))
    report = _get(spec, {"train": [name]}, tmp_path, session)
    assert server.requests_for(path)[0]["range"] is not None  # it asked, the server declined
    assert not report.rows[0]["resumed"]
    assert (tmp_path / "images/train2017" / name).read_bytes() == data


def test_wrong_prefix_in_part_is_caught_by_the_check_and_refetched(mirror, server, spec, session, tmp_path):
    name, path = _first(mirror)
    part = tmp_path / "images/train2017" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\x00" * 500)  # a resumable-looking prefix that is not the file's
    report = _get(spec, {"train": [name]}, tmp_path, session)
    assert [r["range"] for r in server.requests_for(path)] == ["bytes=500-", None]
    size = mirror.image("train", name).stat().st_size
    assert report.rows[0]["attempts"] == 2
    assert report.rows[0]["bytes"] == (size - 500) + size  # the bad resume, then the whole file
    assert (tmp_path / "images/train2017" / name).read_bytes() == mirror.image("train", name).read_bytes()


def test_annotation_archive_resumes_after_a_drop(mirror, server, spec, session, tmp_path):
    spec = dataclasses.replace(spec, annotations_size=mirror.archive_size, annotations_md5=mirror.archive_md5,
                               keep_archive=False)
    server.inject("/" + ARCHIVE, Fault("drop", after=1500))
    paths = download_annotations(spec, tmp_path, session=session, sleep=Sleeps())
    assert [r["range"] for r in server.requests_for("/" + ARCHIVE)] == [None, "bytes=1500-"]
    assert COCO(str(paths["instances_val2017"])).getImgIds() == [1, 2, 3]
    assert not (tmp_path / "archives" / "annotations_trainval2017.zip").exists()  # keep_archive=False


# --- corruption --------------------------------------------------------------------------------
def test_garbage_from_the_server_is_detected_and_fetched_again(mirror, server, spec, session, tmp_path):
    name, path = _first(mirror)
    server.inject(path, Fault("garbage"))
    sleeps = Sleeps()
    report = _get(spec, {"train": [name]}, tmp_path, session, sleeps)
    assert report.rows[0]["attempts"] == 2 and len(sleeps) == 1
    assert (tmp_path / "images/train2017" / name).read_bytes() == mirror.image("train", name).read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "garbled_header", "empty"])
def test_corrupt_file_on_disk_is_detected_and_fetched_again(mirror, server, spec, session, tmp_path, damage):
    names = mirror.file_names["train"][:2]
    good = mirror.image("train", names[1]).read_bytes()
    data = mirror.image("train", names[0]).read_bytes()
    broken = {"truncated": data[: len(data) // 2], "garbled_header": b"\xff" * 64 + data[64:], "empty": b""}[damage]
    (tmp_path / names[0]).write_bytes(broken)
    with pytest.raises(ValueError, match=f"{names[0]} is not a valid image"):
        check_image(tmp_path / names[0])
    target = tmp_path / "images/train2017"
    target.mkdir(parents=True)
    (target / names[0]).write_bytes(broken)
    (target / names[1]).write_bytes(good)
    report = _get(spec, {"train": names}, tmp_path, session)
    assert {r["file_name"]: r["status"] for r in report.rows} == {names[0]: "downloaded", names[1]: "skipped"}
    assert [r["path"] for r in _image_requests(server)] == [f"/train2017/{names[0]}"]
    assert (target / names[0]).read_bytes() == data


def test_corrupt_annotation_archive_is_reported(mirror, server, spec, session, tmp_path):
    spec = dataclasses.replace(spec, retries=1)
    server.inject("/" + ARCHIVE, Fault("garbage"), Fault("garbage"))
    with pytest.raises(CocoDownloadError) as err:
        download_annotations(spec, tmp_path, session=session, sleep=Sleeps())
    assert server.url + "/" + ARCHIVE in str(err.value) and "not a zip archive" in str(err.value)
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.zip"))


def test_archive_md5_mismatch_is_reported(mirror, server, spec, session, tmp_path):
    spec = dataclasses.replace(spec, annotations_md5="0" * 32, retries=0)
    with pytest.raises(CocoDownloadError, match=f"has MD5 {mirror.archive_md5}, expected 0{{32}}"):
        download_annotations(spec, tmp_path, session=session, sleep=Sleeps())


# --- errors, retries, backoff --------------------------------------------------------------------
def test_404_is_reported_with_the_image_id_after_the_rest_is_downloaded(mirror, server, spec, session, tmp_path):
    names = mirror.file_names["train"]
    with pytest.raises(CocoDownloadError) as err:
        _get(spec, {"train": [999_999, *names]}, tmp_path, session)
    message = str(err.value)
    assert f"train image 999999 (000000999999.jpg) from {server.url}/train2017/000000999999.jpg: HTTP 404" in message
    assert message.startswith(f"1 of {len(names) + 1} COCO images could not be downloaded")
    assert "Traceback" not in message and len(message.splitlines()) == 2
    assert len(server.requests_for("/train2017/000000999999.jpg")) == 1  # a 404 is not retried
    assert all((tmp_path / "images/train2017" / n).is_file() for n in names)  # the rest is in place
    assert err.value.report.summary()["downloaded"] == len(names)
    assert err.value.failures[0]["image_id"] == 999_999 and err.value.failures[0]["attempts"] == 1


def test_missing_archive_names_the_url(server, spec, session, tmp_path):
    spec = dataclasses.replace(spec, annotations_archive="annotations/nope.zip")
    with pytest.raises(CocoDownloadError, match=rf"{server.url}/annotations/nope.zip: HTTP 404"):
        download_annotations(spec, tmp_path, session=session, sleep=Sleeps())


def test_503_is_retried_with_exponential_backoff(mirror, server, spec, session, tmp_path):
    name, path = _first(mirror)
    server.inject(path, Fault("status", status=503), Fault("status", status=503))
    sleeps = Sleeps()
    report = _get(spec, {"train": [name]}, tmp_path, session, sleeps)
    assert report.rows[0]["attempts"] == 3 and report.summary()["retries"] == 2
    assert sleeps == [0.01, 0.02]
    assert (tmp_path / "images/train2017" / name).read_bytes() == mirror.image("train", name).read_bytes()


def test_retry_after_is_honoured_up_to_the_cap(mirror, server, spec, session, tmp_path):
    name, path = _first(mirror)
    server.inject(path, Fault("status", status=429, retry_after=3), Fault("status", status=503, retry_after=30))
    sleeps = Sleeps()
    _get(dataclasses.replace(spec, backoff_max_s=10.0), {"train": [name]}, tmp_path, session, sleeps)
    assert sleeps == [3.0, 10.0]


def test_persistent_503_gives_up_with_a_clear_error(mirror, server, spec, session, tmp_path):
    name, path = _first(mirror)
    server.inject(path, *[Fault("status", status=503)] * 4)
    with pytest.raises(CocoDownloadError, match=r"gave up after 4 attempts; last error: HTTP 503") as err:
        _get(spec, {"train": [name]}, tmp_path, session)
    assert err.value.report.summary()["retries"] == 3
    assert not (tmp_path / "images/train2017" / name).exists()


def test_content_length_mismatch_is_detected(mirror, server, spec, session, tmp_path):
    name, path = _first(mirror)
    size = mirror.image("train", name).stat().st_size
    # The server keeps promising the whole file and hanging up half-way: never accepted.
    server.inject(path, Fault("drop", after=size // 2), Fault("drop", after=0))
    with pytest.raises(CocoDownloadError) as err:
        _get(dataclasses.replace(spec, retries=1), {"train": [name]}, tmp_path, session)
    assert f"connection broken after 0 of {size - size // 2} bytes (body shorter than Content-Length" in str(err.value)
    assert not (tmp_path / "images/train2017" / name).exists()  # never under its final name


def test_overstated_content_length_recovers_via_range(mirror, server, spec, session, tmp_path):
    name, path = _first(mirror)
    server.inject(path, Fault("lie_length", extra=100))
    report = _get(spec, {"train": [name]}, tmp_path, session)
    size = mirror.image("train", name).stat().st_size
    assert [r["range"] for r in server.requests_for(path)] == [None, f"bytes={size}-"]  # answered 416
    assert report.rows[0]["attempts"] == 2
    assert (tmp_path / "images/train2017" / name).read_bytes() == mirror.image("train", name).read_bytes()


def test_backoff_is_capped_and_jitter_is_seeded():
    spec = CocoDownloadSpec(backoff_base_s=1.0, backoff_max_s=5.0, jitter=0.5, seed=7)
    first, second = _Fetcher(spec, None, Sleeps()), _Fetcher(spec, None, Sleeps())
    a = [first.delay(i, None) for i in range(6)]
    assert a == [second.delay(i, None) for i in range(6)]  # same seed, same delays
    assert len(set(a)) == 6  # but not constant
    assert all(0.5 * min(5.0, 2 ** i) <= d <= min(5.0, 2 ** i) for i, d in enumerate(a))
    exact = _Fetcher(dataclasses.replace(spec, jitter=0.0), None, Sleeps())
    assert [exact.delay(i, None) for i in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


# --- spec and selection validation --------------------------------------------------------------
def test_spec_defaults_are_the_official_coco_sources(tmp_path):
    spec = CocoDownloadSpec()
    assert spec.annotations_url() == "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
    assert spec.image_url("train", coco_file_name(139)) == "http://images.cocodataset.org/train2017/000000000139.jpg"
    assert (spec.annotations_md5, spec.annotations_size) == (OFFICIAL_ANNOTATIONS_MD5, OFFICIAL_ANNOTATIONS_SIZE)
    assert spec.image_path(tmp_path, "val", "x.jpg") == tmp_path / "images/val2017/x.jpg"
    assert json.loads(json.dumps(spec.to_json()))["splits"] == ["train", "val"]


@pytest.mark.parametrize("field,value", [("splits", ("test",)), ("retries", -1), ("jitter", 2.0),
                                         ("annotations_md5", "xyz"), ("images_base_url", "ftp://x"),
                                         ("images_dir", "images")])
def test_bad_spec_field_is_named(field, value):
    with pytest.raises(ValueError, match=f"CocoDownloadSpec.{field}"):
        CocoDownloadSpec(**{field: value})


def test_bad_selection_is_rejected_before_any_request(server, spec, session, tmp_path):
    with pytest.raises(CocoDownloadError, match="split 'test'"):
        _get(spec, {"test": [1]}, tmp_path, session)
    with pytest.raises(CocoDownloadError, match="'split' column"):
        _get(spec, pd.DataFrame({"image_id": [1]}), tmp_path, session)
    with pytest.raises(CocoDownloadError, match="bare file name"):
        _get(spec, {"train": ["../escape.jpg"]}, tmp_path, session)
    assert server.requests == []
