"""The hub model is fetched like the data (#27): rule fetch_model puts the pinned revision into the
Hugging Face cache (resuming a dropped download, verifying sizes and SHA-256, progress in its
log) before any model job, against a local stand-in of the hub (tests/hub_mirror.py, reached
through HF_ENDPOINT); offline, the missing id and revision are named before any job. The
organism's DAG has no such rule."""
from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from hub_mirror import HubServer
from snakemake_runner import TINY_CONFIG, snakemake

pytestmark = pytest.mark.workflow

REPO_ID, REVISION = "test-org/tiny-llava", "v1"


def _hub_config(tmp_path):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["model"] = {"kind": "pretrained", "pretrained": {"id": REPO_ID, "revision": REVISION}}
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return {**env, **extra}


def test_fetch_model_runs_before_every_model_job_and_resumes_and_verifies(tmp_path, local_model):
    configfile = _hub_config(tmp_path)
    cache = tmp_path / "hf-cache"
    with HubServer(local_model, REPO_ID, revision=REVISION) as hub:
        env = _env(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(cache))
        planned = snakemake(tmp_path, "-n", "--cores", "1", configfile=configfile, env=env).stdout
        jobs = re.split(r"\n(?=(?:local)?rule \w+:)", planned)
        model_jobs = [j for j in jobs if re.match(r"(?:local)?rule (ablate_object_tokens|apply_logit_lens|"
                                                   r"block_object_attention|measure_attention_fractions|"
                                                   r"run_group_knockouts|localize_objects|"
                                                   r"compute_mean_embedding)\b", j)]
        assert model_jobs and all("model_fetch/manifest.json" in j.split("output:")[0] for j in model_jobs)

        hub.drop_after["model.safetensors"] = 4096            # the first download breaks off
        target = "results/tiny/model_fetch/manifest.json"
        snakemake(tmp_path, "--cores", "1", target, configfile=configfile, env=env)
        manifest = json.loads((tmp_path / target).read_text())
        downloads = [r for r in hub.requests if r[0] == "GET" and r[1].endswith("model.safetensors")]
        assert len(downloads) == 2, hub.requests                 # the broken one, then the rest
    assert manifest["id"] == REPO_ID and manifest["revision"] == REVISION and manifest["commit"] == hub.commit
    weights = next(f for f in manifest["files"] if f["file"] == "model.safetensors")
    assert weights["sha256"] == hub.sha256["model.safetensors"]
    snapshot = cache / "models--test-org--tiny-llava" / "snapshots" / hub.commit
    assert (snapshot / "model.safetensors").read_bytes() == (local_model / "model.safetensors").read_bytes()
    log = (tmp_path / "results" / "tiny" / "logs" / "fetch_model.log").read_text()
    assert "Fetching" in log and "verified model.safetensors" in log, log[-3000:]

    # offline with the model cached: the early check passes; with an empty cache it names the model
    offline = _env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"))
    proc = snakemake(tmp_path, "--cores", "1", configfile=configfile, env=offline, check=False)
    message = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert REPO_ID in message and REVISION in message, message[-3000:]
    assert not (tmp_path / "results" / "tiny" / "data").exists(), "a job ran although the model is missing"


def test_the_organism_and_local_directories_fetch_nothing(tmp_path, local_model):
    planned = snakemake(tmp_path, "-n", "--cores", "1").stdout
    assert "fetch_model" not in planned
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["model"] = {"kind": "pretrained", "pretrained": {"id": str(local_model)}}
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump(config))
    assert "fetch_model" not in snakemake(tmp_path, "-n", "--cores", "1", configfile=local).stdout
