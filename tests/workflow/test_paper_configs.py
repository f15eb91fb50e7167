"""Every shipped run config lists its whole DAG on a machine without weights or a GPU."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from snakemake_runner import ROOT, snakemake

pytestmark = pytest.mark.workflow

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_paper_dag_dry_run(tmp_path, config):
    proc = snakemake(tmp_path, "-n", "--cores", "all", configfile=config)
    planned = set(re.findall(r"^rule (\w+):", proc.stdout, flags=re.M))
    assert "download_coco_annotations" in planned
    assert "train_organism" not in planned  # a published model is loaded, not trained
    assert not (tmp_path / "results").exists()
