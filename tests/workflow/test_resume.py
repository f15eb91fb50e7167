"""kill -9, then the same command: Snakemake resumes with no manual step (no --unlock), the
organism training continues from its last checkpoint to the weights of an uninterrupted run, and
a second Snakemake started while the first is alive is still refused."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from shared_run import copy_tiny_run
from snakemake_runner import TINY_CONFIG, snakemake, snakemake_command

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

RUN = yaml.safe_load(TINY_CONFIG.read_text())["run"]
CORES = "2"     # as tiny_run, so the threads (and hence the weights) are the same


def _wait_for(path, process, timeout_s=600.0):
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"snakemake ended ({process.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout_s} s"
        time.sleep(0.5)


def test_kill_9_then_the_same_command_resumes_training_and_a_live_run_keeps_its_lock(tiny_run, tmp_path):
    work = tmp_path / "work"
    copy_tiny_run(tiny_run, work)
    run_dir = work / "results" / RUN
    shutil.rmtree(run_dir / "model")
    command = ("--cores", CORES, f"results/{RUN}/model")          # train the organism again
    cmd, env = snakemake_command(work, *command)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(run_dir / ".model.checkpoint" / "checkpoint.pt", first)
        second = snakemake(work, *command, check=False)              # the first one is alive
        assert second.returncode != 0
        assert "LockException" in second.stdout + second.stderr, second.stderr[-3000:]
        assert first.poll() is None, "the refused second run disturbed the first one"
    finally:
        os.killpg(first.pid, signal.SIGKILL)                          # snakemake and its job
        first.wait()
    assert list((work / ".snakemake" / "locks").glob("*.lock")), "kill -9 left no lock to clear"
    assert not (run_dir / "model").exists()

    resumed = snakemake(work, *command)                               # the same command, no --unlock
    assert "removed the locks of a Snakemake that is no longer running" in resumed.stderr
    training_log = (run_dir / "logs" / "train_organism.log").read_text()
    assert "resuming training from its checkpoint" in training_log, training_log[-2000:]
    for name in ("model.safetensors", "losses.csv", "organism.json"):
        assert (run_dir / "model" / name).read_bytes() == (tiny_run / "results" / RUN / "model" / name).read_bytes(), name
    assert not (run_dir / ".model.checkpoint").exists()
