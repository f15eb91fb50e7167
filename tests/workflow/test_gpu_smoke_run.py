"""benchmarks/gpu_smoke.py at tiny size on the CPU: a random-weight checkpoint directory loaded as a
published model (model.kind pretrained), every stage through the real Snakemake CLI, and the JSON
with each experiment rule's time and images. (`make smoke-gpu` runs the same at LLaVA-1.5-7B size.)"""
from __future__ import annotations

import json
import re
import sys

import pytest

from snakemake_runner import ROOT, snakemake

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import gpu_smoke  # noqa: E402

pytestmark = pytest.mark.workflow


@pytest.mark.slow
def test_tiny_smoke_run_on_cpu_times_every_experiment_rule(tmp_path, capsys):
    out = tmp_path / "gpu_smoke_cpu_tiny.json"
    gpu_smoke.main(["--size", "tiny", "--device", "cpu", "--images", "3", "--workdir", str(tmp_path / "work"),
                    "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["snakemake"]["returncode"] == 0
    assert result["model"]["image_tokens"] == 36 and result["dtype"] == "fp32"
    assert result["checkpoint"]["reused"] is False
    assert set(result["experiment_rules"]) == set(gpu_smoke.EXPERIMENT_RULES)
    for rule in gpu_smoke.EXPERIMENT_RULES:
        entry = result["rules"][rule]
        assert entry["wall_s"] > 0 and entry["images"] == 3 and entry["s_per_image"] > 0, (rule, entry)
        assert entry["load_s"] > 0 and entry["peak_gpu_bytes"] is None  # the CPU: no memory line
    assert result["max_peak_gpu_gib"] is None
    # every final output of the DAG was made, by a model loaded from the checkpoint directory
    run_dir = tmp_path / "work" / "results" / "gpu-smoke-tiny"
    for table in ("neo/ablation/ablation.csv", "neo/logit_lens/scores.csv", "neo/blocking/blocking.csv",
                  "kaduri/attention/fractions.csv", "kaduri/knockout/summary.csv",
                  "kaduri/localization/summary.csv", "kaduri/reprompt/summary.csv"):
        assert (run_dir / table).exists(), table
    log = (run_dir / "logs" / "ablate_object_tokens" / "000.log").read_text()
    assert f"loaded model {tmp_path / 'work' / 'checkpoint'} (fp32, cpu)" in log
    printed = capsys.readouterr().out
    assert "| run_group_knockouts | 1 |" in printed
    # nothing left to do: the DAG is complete
    dry = snakemake(tmp_path / "work", "-n", "--cores", "1", configfile=tmp_path / "work" / "config.yaml")
    assert not re.findall(r"^rule (\w+):", dry.stdout, flags=re.M)


def test_7b_smoke_config_plans_every_stage(tmp_path):
    """The config `make smoke-gpu` runs lists the whole DAG (dry run: no weights, no GPU needed)."""
    configfile = tmp_path / "config.yaml"
    import yaml

    configfile.write_text(yaml.safe_dump(gpu_smoke.smoke_config("7b", "cuda", tmp_path / "checkpoint")))
    proc = snakemake(tmp_path, "-n", "--cores", "all", "--resources", "gpu=1", configfile=configfile)
    planned = set(re.findall(r"^rule (\w+):", proc.stdout, flags=re.M))
    assert set(gpu_smoke.EXPERIMENT_RULES) <= planned
    assert "train_organism" not in planned and "download_coco_annotations" not in planned
