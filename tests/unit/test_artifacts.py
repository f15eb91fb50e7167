"""data.dvc: the committed pointer to data/ (the COCO subset) goes through push and pull like the
run's stage directories, and a pointer nobody has pushed yet is skipped with a note, not an error."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from vlminterp.workflow.artifacts import has_hash, pull, push

REPO = Path(__file__).resolve().parents[2]
RUN = "coco-run"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def _project(path: Path, remote: Path) -> Path:
    """A git + DVC project with the repository's data.dvc, a run's stage dir and a small data/coco."""
    from dvc.repo import Repo

    path.mkdir()
    _git(path, "init", "-q")
    Repo.init(str(path))
    with Repo(str(path)).config.edit() as config:
        config["remote"]["storage"] = {"url": str(remote)}
        config["core"]["remote"] = "storage"
    shutil.copy(REPO / "data.dvc", path / "data.dvc")
    stage = path / "results" / RUN / "neo"
    stage.mkdir(parents=True)
    (stage / "ablation.csv").write_text("image_id,flip\n1,True\n")
    coco = path / "data" / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "images" / "train2017").mkdir(parents=True)
    (coco / "annotations" / "instances_train2017.json").write_text('{"images": [], "annotations": []}')
    (coco / "images" / "train2017" / "000000000139.jpg").write_bytes(bytes(range(256)) * 8)
    return path


def test_committed_data_pointer_tracks_the_coco_root():
    pointer = yaml.safe_load((REPO / "data.dvc").read_text())
    assert [out["path"] for out in pointer["outs"]] == ["data"]
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    coco_root = schema["properties"]["dataset"]["properties"]["coco"]["properties"]["root"]["default"]
    assert Path(coco_root).parts[0] == "data"


def test_data_round_trip_through_a_local_remote(tmp_path):
    origin = _project(tmp_path / "origin", tmp_path / "remote")
    assert not has_hash(origin / "data.dvc")
    push(origin, RUN, extra=[origin / "data"])
    pointer = yaml.safe_load((origin / "data.dvc").read_text())
    assert has_hash(origin / "data.dvc") and pointer["outs"][0]["nfiles"] == 3   # + .provenance.json
    assert pointer["outs"][0]["desc"].startswith("COCO 2017")        # the description survives dvc add
    _git(origin, "add", "-A")
    _git(origin, "commit", "-qm", "track")

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(origin), str(clone))
    assert not (clone / "data").exists()
    pull(clone, RUN, extra=[clone / "data"])
    for path in (origin / "data").rglob("*"):
        if path.is_file():
            assert (clone / path.relative_to(origin)).read_bytes() == path.read_bytes(), path
    assert (clone / "results" / RUN / "neo" / "ablation.csv").read_text() == "image_id,flip\n1,True\n"


def test_pull_skips_a_data_pointer_nobody_pushed(tmp_path, capsys):
    origin = _project(tmp_path / "origin", tmp_path / "remote")
    shutil.rmtree(origin / "data")
    push(origin, RUN)                                   # the run only; data.dvc keeps no hash
    _git(origin, "add", "-A")
    _git(origin, "commit", "-qm", "track")
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(origin), str(clone))
    pulled = pull(clone, RUN, extra=[clone / "data"])
    assert pulled == [clone / "results" / RUN / "neo"]
    assert "data.dvc records no hash yet" in capsys.readouterr().err
    assert not (clone / "data").exists()


def test_pulled_stage_is_restored_once_in_recorded_order_after_the_code(tmp_path):
    """After a checkout, times come back in their recorded order, newer than the workflow code and
    not in the future; a file Snakemake rewrites later is never stamped back."""
    import time

    from vlminterp.workflow.artifacts import PROVENANCE_FILE, record_provenance, restore_pulled_stages

    stage = tmp_path / "results" / RUN / "neo"
    (stage / "sub").mkdir(parents=True)
    files = [stage / "a.csv", stage / "sub" / "b.csv", stage / "c.png"]
    for order, path in enumerate(files):
        path.write_text(path.name)
        os.utime(path, ns=(1_000_000_000_000 + order * 60_000_000_000,) * 2)   # a minute apart
    record_provenance(tmp_path, [stage])
    recorded = (stage / PROVENANCE_FILE).read_bytes()

    clone = tmp_path / "clone"                 # as a checkout + dvc pull leaves it: times of now
    (clone / "workflow").mkdir(parents=True)
    (clone / "Snakefile").write_text("")
    clone_stage = clone / "results" / RUN / "neo"
    (clone_stage / "sub").mkdir(parents=True)
    for path in reversed(files):
        target = clone_stage / path.relative_to(stage)
        target.write_text(path.name)
    (clone_stage / PROVENANCE_FILE).write_bytes(recorded)
    code_time = (clone / "Snakefile").stat().st_mtime_ns

    assert restore_pulled_stages(clone, clone, [clone_stage]) == [clone_stage]
    times = [(clone_stage / p.relative_to(stage)).stat().st_mtime_ns for p in files]
    assert code_time < times[0] < times[1] < times[2] <= time.time_ns() + 1_000_000_000
    assert restore_pulled_stages(clone, clone, [clone_stage]) == []          # once per checkout
    rewritten = clone_stage / "a.csv"
    rewritten.write_text("rewritten by snakemake")
    after = rewritten.stat().st_mtime_ns
    assert restore_pulled_stages(clone, clone, [clone_stage]) == []
    assert rewritten.stat().st_mtime_ns == after
