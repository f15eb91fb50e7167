"""Outputs pushed to a real DVC remote (the repository's own default, a local directory next to
the checkout) and pulled into a real `git clone` are byte-identical, and Snakemake, run inside the
clone on the clone's own Snakefile, scripts and library (with their own checkout times), then has
nothing left to do: after a plain `dvc pull`, after `make pull`, and only the missing stages after
pulling two of them. A parameter changed in the clone still reruns what depends on it."""
from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared_run import copy_tiny_run
from snakemake_runner import ROOT
from vlminterp.workflow.artifacts import REMOTE_HELP, ArtifactError, main as artifacts_main, push

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

RUN = "tiny"
CONFIG = "tests/configs/tiny.yaml"
BIN = Path(sys.executable).parent
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}


def _run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    """Run a command inside a checkout, importing that checkout's library (as its user would)."""
    env = {**os.environ, **GIT_ENV, "PYTHONPATH": str(cwd / "src"), "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _copy_checkout(source: Path, target: Path) -> None:
    """The files git would commit from this checkout (tracked or not ignored), as they are now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=source, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        path = source / rel
        if rel != ".venv" and path.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / rel)


def _planned_rules(checkout: Path, configfile: str = CONFIG) -> set[str]:
    out = _run(checkout, str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", configfile).stdout
    return set(re.findall(r"^rule (\w+):", out, flags=re.M))


@pytest.fixture(scope="module")
def origin(tiny_run, tmp_path_factory):
    """A git repository of this checkout holding the tiny run (outputs and Snakemake's metadata),
    pushed with `make push RUN=tiny` to the default remote ../vlminterp-dvc-storage, pointers
    committed as the README says."""
    base = tmp_path_factory.mktemp("dvc")
    origin = base / "origin"
    _copy_checkout(ROOT, origin)
    copy_tiny_run(tiny_run, origin, "results", ".snakemake/metadata")
    _run(origin, "git", "init", "-q")
    _run(origin, "git", "add", "-A")
    _run(origin, "git", "commit", "-qm", "project")
    # `-o install`: the shared venv is already installed (BIN points at it).
    _run(origin, "make", "-o", "install", "push", f"RUN={RUN}", f"BIN={BIN}")
    _run(origin, "git", "add", f"results/{RUN}")
    _run(origin, "git", "commit", "-qm", "share the tiny run")
    assert (base / "vlminterp-dvc-storage").is_dir()
    return origin


def _clone(origin: Path, name: str) -> Path:
    clone = origin.parent / name
    _run(origin.parent, "git", "clone", "-q", str(origin), str(clone))
    assert not (clone / "results" / RUN / "model").exists()
    return clone


def _differences(cmp: filecmp.dircmp) -> list[str]:
    found = cmp.left_only + cmp.right_only + cmp.diff_files + cmp.funny_files
    for sub in cmp.subdirs.values():
        found += _differences(sub)
    return found


def test_plain_dvc_pull_leaves_nothing_to_do_and_params_still_count(origin):
    clone = _clone(origin, "clone_dvc_pull")
    _run(clone, str(BIN / "dvc"), "pull")                 # exits 0 despite the hashless data.dvc
    for stage in (origin / "results" / RUN).iterdir():
        if stage.is_dir():
            comparison = filecmp.dircmp(stage, clone / "results" / RUN / stage.name, ignore=[])
            assert _differences(comparison) == [], stage
    assert _planned_rules(clone) == set()

    config = clone / CONFIG
    config.write_text(config.read_text().replace("html_images: 3", "html_images: 2"))
    planned = _planned_rules(clone)
    assert {"apply_logit_lens", "write_logit_lens_pages"} <= planned, planned
    assert not planned & {"generate_world", "train_organism", "ablate_object_tokens"}, planned


def test_make_pull_leaves_nothing_to_do(origin):
    clone = _clone(origin, "clone_make_pull")
    _run(clone, "make", "-o", "install", "pull", f"RUN={RUN}", f"BIN={BIN}")
    assert _planned_rules(clone) == set()


def test_pulling_two_stages_schedules_only_the_rest(origin):
    clone = _clone(origin, "clone_partial")
    _run(clone, str(BIN / "dvc"), "pull", f"results/{RUN}/data.dvc", f"results/{RUN}/model.dvc")
    planned = _planned_rules(clone)
    assert planned, "nothing left to do although most stages were not pulled"
    assert not planned & {"generate_world", "train_organism"}, planned
    assert {"plot_training_curve", "evaluate_organism"} <= planned


def _dvc_project(path: Path) -> None:
    from dvc.repo import Repo

    _run(path, "git", "init", "-q")
    Repo.init(str(path))
    _run(path, "git", "add", "-A")
    _run(path, "git", "commit", "-qm", "init")


def test_missing_remote_names_the_command_to_configure_one(tiny_run, tmp_path, capsys):
    project = tmp_path / "noremote"
    project.mkdir()
    _dvc_project(project)
    copy_tiny_run(tiny_run, project, f"results/{RUN}/organism")
    with pytest.raises(ArtifactError, match="dvc remote add"):
        push(project, RUN)
    assert artifacts_main(["push", "--run", RUN, "--repo", str(project)]) == 1
    assert "dvc remote add -d" in capsys.readouterr().err
    assert "dvc remote add" in REMOTE_HELP


def test_a_clone_elsewhere_is_told_its_resolved_remote_then_pulls_from_a_shared_absolute_one(origin, tmp_path):
    """The default remote ../vlminterp-dvc-storage is resolved against each clone: a clone in
    another parent directory is told which (missing) directory it looked in, and pulls once it
    names the shared remote by its absolute path (#27)."""
    shared = origin.parent / "vlminterp-dvc-storage"
    elsewhere = tmp_path / "other-parent"
    elsewhere.mkdir()
    clone = elsewhere / "clone"
    _run(elsewhere, "git", "clone", "-q", str(origin), str(clone))
    env = {**os.environ, **GIT_ENV, "PYTHONPATH": str(clone / "src")}
    failed = subprocess.run(["make", "-o", "install", "pull", f"RUN={RUN}", f"BIN={BIN}"], cwd=clone,
                            capture_output=True, text=True, env=env)
    assert failed.returncode != 0
    assert f"DVC remote 'storage' at {elsewhere / 'vlminterp-dvc-storage'} does not exist" in failed.stderr, \
        failed.stderr[-3000:]
    assert "dvc remote add -d --local storage" in failed.stderr
    _run(clone, str(BIN / "dvc"), "remote", "add", "-d", "--local", "storage", str(shared))
    pulled = _run(clone, "make", "-o", "install", "pull", f"RUN={RUN}", f"BIN={BIN}")
    assert f"from DVC remote 'storage' at {shared}" in pulled.stderr, pulled.stderr[-3000:]
    assert (clone / "results" / RUN / "model").is_dir()
    assert _planned_rules(clone) == set()


def test_relative_remote_is_named_resolved_in_push_and_pull_messages(tmp_path, capsys):
    """Cheap (no DAG): push from one project with the repository's relative default remote, then pull
    into a clone in another parent directory: the failure names the clone's own resolved (missing)
    remote, and an absolute shared remote works (#27)."""
    from vlminterp.workflow.artifacts import pull

    project = tmp_path / "a" / "project"
    project.mkdir(parents=True)
    shutil.copy2(ROOT / ".dvc" / "config", project / "config.tmp")
    _dvc_project(project)
    shutil.move(project / "config.tmp", project / ".dvc" / "config")      # url = ../../vlminterp-dvc-storage
    stage = project / "results" / RUN / "organism"
    stage.mkdir(parents=True)
    (stage / "evaluation.csv").write_text("task,accuracy\npolling,1.0\n")
    assert artifacts_main(["push", "--run", RUN, "--repo", str(project)]) == 0
    shared = tmp_path / "a" / "vlminterp-dvc-storage"
    out = capsys.readouterr()
    assert f"DVC remote 'storage' at {shared}" in out.err + out.out
    _run(project, "git", "add", "-A")
    _run(project, "git", "commit", "-qm", "pointers")

    clone = tmp_path / "b" / "clone"
    clone.parent.mkdir()
    _run(clone.parent, "git", "clone", "-q", str(project), str(clone))
    with pytest.raises(ArtifactError) as missing:
        pull(clone, RUN)
    assert f"DVC remote 'storage' at {tmp_path / 'b' / 'vlminterp-dvc-storage'} does not exist" in str(missing.value)
    assert "dvc remote add -d --local storage" in str(missing.value)
    _run(clone, str(BIN / "dvc"), "remote", "add", "-d", "--local", "storage", str(shared))
    assert artifacts_main(["pull", "--run", RUN, "--repo", str(clone)]) == 0
    out = capsys.readouterr()
    assert f"from DVC remote 'storage' at {shared}" in out.err
    assert (clone / "results" / RUN / "organism" / "evaluation.csv").read_text() == (stage / "evaluation.csv").read_text()
