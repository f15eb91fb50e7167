"""The repository's own DAG (tiny config) on the real single-node SLURM cluster: every shard of a
per-image stage is its own SLURM job, and every file (tables, figures, pages) is byte-identical
to the local run's, logs and timings aside. The world and the trained organism are taken from the
local run (training resumed after kill -9 equals an uninterrupted one byte for byte in
tests/unit/test_organism.py); every experiment stage runs again, sharded, on the cluster. This
is also the suite's same-config-twice check of the experiments where a cluster runs
(tests/workflow/test_other_world.py runs the whole DAG twice locally otherwise), and it covers the
sharded-equals-unsharded checks of tests/workflow/test_{neo,kaduri}_stages.py, which then skip."""
from __future__ import annotations

from pathlib import Path

import shutil

import pytest
import yaml

from shared_run import copy_tiny_run
from snakemake_runner import ROOT, TINY_CONFIG, snakemake
from vlminterp.workflow.registry import STAGES

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.workflow]

RUN = yaml.safe_load(TINY_CONFIG.read_text())["run"]
IMAGES_PER_SHARD = 8
SHARDED_RULES = tuple(stage.rule for stage in STAGES if stage.sharded)
# The stage directories of the sharded rules and of what reads them (papers/): removed from the
# copy of the local run, so that exactly these stages run again on the cluster.
RERUN_DIRS = (*sorted({Path(table).parent.as_posix() for stage in STAGES if stage.sharded
                       for table in stage.tables}), "papers")


def _outputs(run_dir: Path) -> dict[str, bytes]:
    """Every output file by relative path, except logs, timings, shard files and the effective config
    (the SLURM run's config differs in its sharding, and so in its shard files, by design)."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] not in ("logs", "config")
            and "shards" not in p.parts and "timings" not in p.name}


def test_sharded_dag_on_slurm_equals_the_local_run(slurm_cluster, slurm_plugin_version, tiny_run,
                                                   tmp_path):
    work = tmp_path / "on_slurm"
    copy_tiny_run(tiny_run, work)
    for stage in RERUN_DIRS:
        shutil.rmtree(work / "results" / RUN / stage)
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["sharding"] = {"images_per_shard": IMAGES_PER_SHARD}
    config_file = tmp_path / "sharded.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))   # the rules' params unchanged
    planned = snakemake(work, "-n", "--cores", "1", configfile=config_file).stdout
    assert "rule train_organism:" not in planned and "rule generate_world:" not in planned, planned[-3000:]

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
    assert {"neo/ablation/ablation.csv", "neo/logit_lens/topk.csv.gz", "neo/blocking/blocking.csv",
            "kaduri/knockout/descriptions.csv", "kaduri/reprompt/answers.csv",
            "papers/paper_comparison.csv"} <= set(local)
    different = [name for name in local if local[name] != on_slurm[name]]
    assert not different, f"{len(different)} of {len(local)} files differ between the local and the SLURM run: {different}"
