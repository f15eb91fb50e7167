"""kill -9, then the same command: Snakemake resumes with no manual step (no --unlock), the organism
training continues from its last checkpoint, and a second Snakemake started while the first is alive
is refused. The session's tiny run is built this way (tests/shared_run.py,
`build_killed_and_resumed`); these tests read what its build saw (`<run>.build/`) and the run's
logs. That the resumed run's files equal an uninterrupted run's, byte for byte, is checked by
tests/workflow/test_other_world.py (a second, uninterrupted run of the same config)."""
from __future__ import annotations

import json

import pytest
import yaml

from shared_run import build_record
from snakemake_runner import TINY_CONFIG

pytestmark = [pytest.mark.slow, pytest.mark.workflow]   # slow: they need the tiny run

RUN = yaml.safe_load(TINY_CONFIG.read_text())["run"]


@pytest.fixture(scope="module")
def facts(tiny_run):
    return json.loads((build_record(tiny_run) / "facts.json").read_text())


def test_a_second_snakemake_is_refused_while_the_first_runs(tiny_run, facts):
    refused = (build_record(tiny_run) / "refused.log").read_text()
    assert facts["refused_returncode"] != 0
    assert "LockException" in refused and "Another Snakemake is running in" in refused, refused[-3000:]
    assert facts["first_alive_after_the_refusal"], "the refused second run disturbed the first one"


def test_kill_9_during_training_leaves_locks_and_a_checkpoint(facts):
    assert facts["locks_after_the_kill"], "kill -9 left no lock to clear"
    assert facts["checkpoint_after_the_kill"], "the kill did not land during the training"


def test_the_same_command_clears_the_stale_locks_and_resumes_training(tiny_run, facts):
    resumed = (build_record(tiny_run) / "resumed.log").read_text()
    assert facts["resumed_returncode"] == 0
    assert "removed the locks of a Snakemake that is no longer running" in resumed, resumed[-3000:]
    run_dir = tiny_run / "results" / RUN
    training_log = (run_dir / "logs" / "train_organism.log").read_text()
    assert "resuming training from its checkpoint" in training_log, training_log[-2000:]
    assert json.loads((run_dir / "model" / "timings.json").read_text())["seconds"]["resumed_from"]
    assert not (run_dir / ".model.checkpoint").exists(), "the checkpoint outlived the finished model"
