"""benchmarks/gpu_smoke.py at tiny size on the CPU: a random-weight checkpoint directory loaded as a
published model (model.kind pretrained), two experiment rules through the real Snakemake CLI
(`--rules`), and the JSON with their time and images. The whole DAG on a checkpoint directory runs in
the paper rehearsals (test_paper_rehearsal.py); `make smoke-gpu` runs every rule at LLaVA-1.5-7B size,
planned below."""
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

# One rule of each images_given path (a safetensors' metadata, a sharded table), neither needing
# the other nor any other experiment rule.
RULES = ("compute_mean_embedding", "run_group_knockouts")


def planned_rules(workdir, *targets) -> set[str]:
    """The rules a dry run of the smoke config in `workdir` would still run for `targets`."""
    proc = snakemake(workdir, "-n", "--cores", "1", *targets, configfile=workdir / "config.yaml")
    return set(re.findall(r"^rule (\w+):", proc.stdout, flags=re.M))


@pytest.mark.slow
def test_tiny_smoke_run_on_cpu_times_the_rules_asked_for(tmp_path, capsys):
    out, work = tmp_path / "gpu_smoke_cpu_tiny.json", tmp_path / "work"
    gpu_smoke.main(["--size", "tiny", "--device", "cpu", "--images", "3", "--workdir", str(work),
                    "--out", str(out), "--rules", *RULES])
    result = json.loads(out.read_text())
    assert result["snakemake"]["returncode"] == 0 and result["requested_rules"] == list(RULES)
    assert result["model"]["image_tokens"] == 36 and result["dtype"] == "fp32"
    assert result["checkpoint"]["reused"] is False
    assert result["experiment_rules"] == list(RULES)  # no other experiment rule ran
    for rule in RULES:
        entry = result["rules"][rule]
        assert entry["wall_s"] > 0 and entry["images"] == 3 and entry["s_per_image"] > 0, (rule, entry)
        assert entry["load_s"] > 0 and entry["peak_gpu_bytes"] is None  # the CPU: no memory line
    assert result["max_peak_gpu_gib"] is None
    log = (work / "results" / "gpu-smoke-tiny" / "logs" / "run_group_knockouts" / "000.log").read_text()
    assert f"loaded model {work / 'checkpoint'} (fp32, cpu)" in log
    printed = capsys.readouterr().out
    assert "| run_group_knockouts | 1 |" in printed and "| compute_mean_embedding | 1 |" in printed
    assert "compute_mean_embedding + run_group_knockouts:" in printed
    # nothing left to do for the two rules' tables; the rest of the DAG was not run
    tables = ["results/gpu-smoke-tiny/neo/mean_embedding.safetensors",
              "results/gpu-smoke-tiny/kaduri/knockout/descriptions.csv"]
    assert planned_rules(work, *tables) == set()
    rest = planned_rules(work)
    assert set(gpu_smoke.EXPERIMENT_RULES) - set(RULES) <= rest and not set(RULES) & rest


def test_7b_smoke_config_plans_every_stage(tmp_path):
    """The config `make smoke-gpu` runs lists the whole DAG (dry run: no weights, no GPU needed)."""
    configfile = tmp_path / "config.yaml"
    import yaml

    configfile.write_text(yaml.safe_dump(gpu_smoke.smoke_config("7b", "cuda", tmp_path / "checkpoint")))
    proc = snakemake(tmp_path, "-n", "--cores", "all", "--resources", "gpu=1", configfile=configfile)
    planned = set(re.findall(r"^rule (\w+):", proc.stdout, flags=re.M))
    assert set(gpu_smoke.EXPERIMENT_RULES) <= planned
    assert "train_organism" not in planned and "download_coco_annotations" not in planned


def test_rules_must_be_experiment_rules(capsys):
    """A misspelt --rules name stops before anything is written, naming the rule and the choices."""
    with pytest.raises(SystemExit):
        gpu_smoke.main(["--size", "tiny", "--device", "cpu", "--rules", "localise_objects"])
    error = capsys.readouterr().err
    assert "'localise_objects'" in error and "localize_objects" in error
