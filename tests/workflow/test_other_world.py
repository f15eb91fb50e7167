"""Any valid world runs to the end, and the same config run twice gives the same bytes.

* A second world that differs from the default in shapes, colours, grid (56-px images on a 14-px
  grid), object count and seed, with a briefly trained organism whose accuracies sit at 0% or
  100% (where an interval bound 1e-16 on the wrong side once stopped the plots).
* The tiny config run again from scratch, uninterrupted: every file is byte-identical to the
  session's run except the logs and the files named as timings (model/timings.json). The session's
  run was killed (kill -9) during training and resumed (tests/workflow/test_resume.py), so this
  also compares a resumed run with an uninterrupted one. Where the SLURM cluster runs (CI:
  VLMINTERP_REQUIRE_SLURM=1), its test is that second run (tests/slurm), so this one is skipped
  rather than training and running the tiny DAG a third time.
"""
from __future__ import annotations

import json
import os
import re

import pandas as pd
import pytest
import yaml

from snakemake_runner import ROOT, TINY_CONFIG, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

OTHER_WORLD = ROOT / "tests" / "configs" / "other_world.yaml"


def test_a_second_world_runs_to_the_end(tmp_path):
    config = yaml.safe_load(OTHER_WORLD.read_text())
    snakemake(tmp_path, "--cores", "2", configfile=OTHER_WORLD)
    out = tmp_path / "results" / config["run"]
    world = config["dataset"]["shapes"]
    instances = json.loads((out / "data/shapes/annotations/instances_val.json").read_text())
    assert {c["name"] for c in instances["categories"]} == set(world["shapes"])
    assert {(i["width"], i["height"]) for i in instances["images"]} == {(56, 56)}
    per_image = pd.Series([a["image_id"] for a in instances["annotations"]]).value_counts()
    assert per_image.between(world["min_objects"], world["max_objects"]).all()
    assert per_image.max() > world["min_objects"]
    summary = pd.read_csv(out / "organism/evaluation_summary.csv")
    assert ((summary["accuracy"] == 0) | (summary["accuracy"] == 1)).any(), summary
    assert (summary["ci_low"] <= summary["accuracy"]).all() and (summary["accuracy"] <= summary["ci_high"]).all()
    for figure in ("organism/evaluation.png", "neo/ablation/flip_rates.png", "neo/blocking/blocking_drops.png",
                   "kaduri/knockout/conditions.png", "kaduri/reprompt/accuracy.png"):
        assert (out / figure).is_file(), figure
    planned = re.findall(r"^rule (\w+):", snakemake(tmp_path, "-n", "--cores", "1", configfile=OTHER_WORLD).stdout,
                         flags=re.M)
    assert planned == []


def _is_timing_or_log(relative: str) -> bool:
    return relative.startswith("logs/") or "timings" in relative.rsplit("/", 1)[-1]


@pytest.mark.skipif(os.environ.get("VLMINTERP_REQUIRE_SLURM") == "1",
                    reason="the SLURM test's run is the second run, compared file by file with the first")
def test_the_same_config_twice_gives_byte_identical_files(tiny_run, tmp_path):
    """A fresh, uninterrupted run equals the session's killed-and-resumed one, logs and timings aside."""
    run = yaml.safe_load(TINY_CONFIG.read_text())["run"]
    snakemake(tmp_path, "--cores", "2")
    first, second = tiny_run / "results" / run, tmp_path / "results" / run

    def files(root):
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    assert files(first) == files(second)
    compared = sorted(f for f in files(first) if not _is_timing_or_log(f))
    different = [f for f in compared if (first / f).read_bytes() != (second / f).read_bytes()]
    assert not different, f"{len(different)} of {len(compared)} files differ between two runs: {different}"
    assert {"model/model.safetensors", "neo/mean_embedding.safetensors", "organism/evaluation.pdf",
            "model/organism.json"} <= set(compared)
