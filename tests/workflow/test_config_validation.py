"""A bad config fails before any job runs, with a message that names the key."""
from __future__ import annotations

import pytest
import yaml

from snakemake_runner import TINY_CONFIG, snakemake

pytestmark = pytest.mark.workflow


def _bad_config(tmp_path, edit):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("edit, key_in_message", [
    (lambda c: c.update(sed=1), "sed"),
    (lambda c: c.update(seed="zero"), "zero"),
    (lambda c: c.update(seed=-1), "seed"),
    (lambda c: c["dataset"].update(kind="imagenet"), "imagenet"),
    (lambda c: c["evaluation"].update(batch_sizes=4), "batch_sizes"),
    (lambda c: c["evaluation"].update(batch_size=0), "batch_size"),
], ids=["unknown-top-key", "wrong-type", "out-of-range", "bad-enum", "unknown-nested-key",
        "nested-out-of-range"])
def test_bad_config_names_the_key_and_runs_nothing(tmp_path, edit, key_in_message):
    proc = snakemake(tmp_path, "--cores", "1", configfile=_bad_config(tmp_path, edit), check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert key_in_message in message, message[-3000:]
    assert not (tmp_path / "results").exists(), "a job ran despite the invalid config"


PASTED_KEY = "sk-proj-Zq8d0c1f2e3a4b5c6d7e8f9"


@pytest.mark.parametrize("edit, expected_line", [
    (lambda c: c.update(sed=1), "sed: unknown key"),
    (lambda c: c.setdefault("kaduri", {}).update(llm_judge={"enabled": True, "api_key_env": PASTED_KEY}),
     "kaduri.llm_judge.api_key_env: must be the NAME of an environment variable"),
], ids=["unknown-key", "pasted-api-key"])
def test_each_problem_is_one_short_line_naming_key_and_file(tmp_path, edit, expected_line):
    """No schema dump: the message is a few lines, names the key and the --configfile, and never
    echoes a pasted secret; nothing (not even Snakemake's metadata) is written. (The cross-key
    rules: tests/unit/test_config_checks.py.)"""
    bad = _bad_config(tmp_path, edit)
    proc = snakemake(tmp_path, "-n", "--cores", "1", configfile=bad, check=False)
    message = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert expected_line in message, message[-3000:]
    assert str(bad) in message
    assert len(message.splitlines()) < 12, message
    assert PASTED_KEY not in message
    assert not (tmp_path / "results").exists() and not (tmp_path / ".snakemake" / "metadata").exists()


def test_enabled_judge_with_unset_key_fails_before_any_job(tmp_path):
    import os

    judge = {"enabled": True, "api_key_env": "VLMINTERP_TEST_UNSET_JUDGE_KEY"}
    bad = _bad_config(tmp_path, lambda c: c.setdefault("kaduri", {}).update(llm_judge=judge))
    env = {k: v for k, v in os.environ.items() if k != judge["api_key_env"]}
    proc = snakemake(tmp_path, "--cores", "1", configfile=bad, check=False, env=env)
    assert proc.returncode != 0
    assert "VLMINTERP_TEST_UNSET_JUDGE_KEY (kaduri.llm_judge.api_key_env) is not set" in (
        proc.stdout + proc.stderr)
    assert not (tmp_path / "results").exists(), "a job ran although the judge cannot run"


def test_gpu_config_without_gpu_fails_before_any_job(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = snakemake(tmp_path, "--cores", "1",
                     configfile=_bad_config(tmp_path, lambda c: c.update(device="cuda")), check=False)
    assert proc.returncode != 0
    assert "no CUDA GPU is visible" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists(), "a job ran although the GPU is missing"


def test_gpu_config_dry_run_works_without_gpu(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "1",
                     configfile=_bad_config(tmp_path, lambda c: c.update(device="cuda")))
    assert "train_organism" in proc.stdout


def _pretrained(model_id):
    def edit(config):
        config["model"] = {"kind": "pretrained", "pretrained": {"id": model_id}}
    return edit


def test_missing_local_model_directory_fails_before_any_job(tmp_path):
    missing = tmp_path / "nonexistent" / "llava-phi-3"
    configfile = _bad_config(tmp_path, _pretrained(str(missing)))
    proc = snakemake(tmp_path, "--cores", "1", configfile=configfile, check=False)
    message = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"model directory '{missing}' (model.pretrained.id) does not exist" in message, message[-3000:]
    assert "hf download" not in message
    assert not (tmp_path / "results").exists(), "a job ran (or wrote its log) although the model is missing"
    # the dry run still lists the DAG: a machine without the weights can plan the run
    planned = snakemake(tmp_path, "-n", "--cores", "1", configfile=configfile)
    assert "select_kaduri_images" in planned.stdout or "select_neo_targets" in planned.stdout


@pytest.mark.parametrize("organism, planned", [
    ({"routing": "window", "routing_layers": [1]}, True),
    ({}, False),
], ids=["window", "direct"])
def test_planted_routing_runs_the_method_validation(tmp_path, organism, planned):
    """A planted organism's run asks for papers/method_validation.csv (issue #24); the direct one does not."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["model"]["organism"].update(organism)
    path = tmp_path / "planted.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "-n", "--cores", "1", configfile=path)
    assert ("validate_methods" in proc.stdout) == planned, proc.stdout[-2000:]


def test_the_tiny_direct_run_recovers_its_planted_truth(tiny_run, tmp_path):
    """The method validation on the session's tiny run (#24), asked for by name as the README does for
    the direct organism: its one planted truth (hiding the image from the query and generated tokens
    leaves no route, so K2 finds one description for every image) is recovered, and the methods
    without a planted truth are reported, not judged."""
    import pandas as pd

    from shared_run import copy_tiny_run

    run = yaml.safe_load(TINY_CONFIG.read_text())["run"]
    work = copy_tiny_run(tiny_run, tmp_path / "work")
    proc = snakemake(work, "--cores", "1", f"results/{run}/papers/method_validation.csv")
    assert "validate_methods" in proc.stdout + proc.stderr
    table = pd.read_csv(work / "results" / run / "papers" / "method_validation.csv")
    assert set(table["routing"]) == {"direct"} and {"N1", "K2", "K3", "K4"} <= set(table["method"])
    judged = table[table["passed"].notna()]
    assert list(judged["condition"]) == ["image->query+generated"], judged
    assert judged["passed"].astype(bool).all() and (judged["expected"] == "destroys").all(), judged.to_dict("records")


def test_planted_window_beyond_the_depth_names_the_key(tmp_path):
    """The band is checked against the organism's depth before any job (the tiny organism has 2
    layers); the other routing checks: tests/unit/test_routing.py."""
    organism, key = {"routing": "window", "routing_layers": [2]}, "routing_layers"
    path = _bad_config(tmp_path, lambda c: c["model"]["organism"].update(organism))
    proc = snakemake(tmp_path, "--cores", "1", configfile=path, check=False)
    assert proc.returncode != 0 and key in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
