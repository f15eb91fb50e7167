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
