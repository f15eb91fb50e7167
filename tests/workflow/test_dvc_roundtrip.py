"""Outputs pushed to a real DVC remote (a local directory) and pulled into a fresh clone are
byte-identical, and Snakemake then has nothing left to do; a partial pull reruns only the rest."""
from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from snakemake_runner import TINY_CONFIG, snakemake
from vlminterp.artifacts import REMOTE_HELP, ArtifactError, main as artifacts_main, pull, push

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

RUN = "tiny"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, **GIT_ENV})


def _dvc_project(path: Path, remote: Path | None) -> None:
    from dvc.repo import Repo

    _git(path, "init", "-q")
    Repo.init(str(path))
    if remote is not None:
        with Repo(str(path)).config.edit() as config:
            config["remote"]["storage"] = {"url": str(remote)}
            config["core"]["remote"] = "storage"
    _git(path, "add", "-A")
    _git(path, "commit", "-qm", "init")


def _planned_rules(workdir: Path) -> set[str]:
    import re

    out = snakemake(workdir, "-n", "--cores", "1").stdout
    return set(re.findall(r"^rule (\w+):", out, flags=re.M))


@pytest.fixture(scope="module")
def pushed(tiny_run, tmp_path_factory):
    """A git+DVC project holding the tiny run's outputs, pushed to a local-directory remote."""
    base = tmp_path_factory.mktemp("dvc")
    origin, remote = base / "origin", base / "remote"
    origin.mkdir()
    _dvc_project(origin, remote)
    shutil.copytree(tiny_run / "results", origin / "results", copy_function=shutil.copy2)
    push(origin, RUN)
    _git(origin, "add", "-A")
    _git(origin, "commit", "-qm", "track tiny run")
    return base, origin


def _clone(base: Path, origin: Path, name: str) -> Path:
    clone = base / name
    _git(base, "clone", "-q", str(origin), str(clone))
    return clone


def test_pull_into_fresh_clone_is_byte_identical_and_up_to_date(pushed):
    base, origin = pushed
    clone = _clone(base, origin, "clone_full")
    assert not (clone / "results" / RUN / "model").exists()
    pull(clone, RUN)
    comparison = filecmp.dircmp(origin / "results" / RUN, clone / "results" / RUN)
    def differences(cmp):
        found = cmp.left_only + cmp.right_only + cmp.diff_files + cmp.funny_files
        for sub in cmp.subdirs.values():
            found += differences(sub)
        return found
    assert differences(comparison) == []
    for table in (origin / "results" / RUN).rglob("*.csv"):
        twin = clone / table.relative_to(origin)
        assert twin.read_bytes() == table.read_bytes(), table
    assert _planned_rules(clone) == set()


def test_partial_pull_schedules_only_the_missing_stages(pushed):
    base, origin = pushed
    clone = _clone(base, origin, "clone_partial")
    from dvc.repo import Repo

    Repo(str(clone)).pull([str(clone / "results" / RUN / "data.dvc"),
                           str(clone / "results" / RUN / "model.dvc")])
    from vlminterp.artifacts import restore_mtimes

    for stage in ("data", "model"):
        restore_mtimes(clone / "results" / RUN / stage)
    planned = _planned_rules(clone)
    assert planned, "nothing left to do although most stages were not pulled"
    assert not planned & {"generate_world", "train_organism"}, planned
    assert {"plot_training_curve", "evaluate_organism"} <= planned


def test_missing_remote_names_the_command_to_configure_one(tiny_run, tmp_path, capsys):
    project = tmp_path / "noremote"
    project.mkdir()
    _dvc_project(project, None)
    shutil.copytree(tiny_run / "results" / RUN / "organism", project / "results" / RUN / "organism")
    with pytest.raises(ArtifactError, match="dvc remote add"):
        push(project, RUN)
    assert artifacts_main(["push", "--run", RUN, "--repo", str(project)]) == 1
    assert "dvc remote add -d" in capsys.readouterr().err
    assert "dvc remote add" in REMOTE_HELP
