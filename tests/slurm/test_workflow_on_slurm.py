"""The repository's own DAG (tiny config: world, organism training, every experiment) on the real
single-node SLURM cluster: every shard of a per-image stage is its own SLURM job, and every file
(tables, weights, figures, pages, the effective config) is byte-identical to the local run's, logs
and timings aside. This second full run is also the suite's same-config-twice check where a
cluster runs (tests/workflow/test_other_world.py runs it locally otherwise)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from snakemake_runner import ROOT, TINY_CONFIG, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.workflow]

RUN = yaml.safe_load(TINY_CONFIG.read_text())["run"]
IMAGES_PER_SHARD = 8
SHARDED_RULES = ("ablate_object_tokens", "apply_logit_lens", "block_object_attention",
                 "measure_attention_fractions", "run_group_knockouts", "localize_objects",
                 "answer_reprompt_questions")


def _outputs(run_dir: Path) -> dict[str, bytes]:
    """Every output file by relative path, except logs, timings, shard files and the effective config
    (the SLURM run's config differs in its sharding, and so in its shard files, by design)."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] not in ("logs", "config")
            and "shards" not in p.parts and "timings" not in p.name}


def test_sharded_dag_on_slurm_equals_the_local_run(slurm_cluster, slurm_plugin_version, tiny_run,
                                                   tmp_path):
    work = tmp_path / "on_slurm"
    work.mkdir()
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["sharding"] = {"images_per_shard": IMAGES_PER_SHARD}
    config_file = tmp_path / "sharded.yaml"
    config_file.write_text(yaml.safe_dump(config))

    snakemake(work, "--executor", "slurm", "--profile", str(ROOT / "profiles" / "slurm"),
              *slurm_cluster.snakemake_args(), "--jobs", "4", configfile=config_file,
              env=slurm_cluster.env)

    logs = work / ".snakemake" / "slurm_logs"
    for rule in SHARDED_RULES:
        shard_jobs = list((logs / f"rule_{rule}").rglob("*.log"))
        assert len(shard_jobs) >= 2, f"{rule}: expected one SLURM job per shard, found {shard_jobs}"
    assert not (logs / "rule_plot_token_ablation").exists(), "plots are local rules"

    local, on_slurm = _outputs(tiny_run / "results" / RUN), _outputs(work / "results" / RUN)
    assert set(on_slurm) == set(local)
    assert {"model/model.safetensors", "neo/mean_embedding.safetensors", "organism/evaluation.pdf",
            "neo/ablation/ablation.csv", "kaduri/knockout/descriptions.csv"} <= set(local)
    different = [name for name in local if local[name] != on_slurm[name]]
    assert not different, f"{len(different)} of {len(local)} files differ between the local and the SLURM run: {different}"
