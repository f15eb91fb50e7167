"""The whole DAG runs with the real Snakemake CLI on the tiny config, resumes and reruns stages."""
from __future__ import annotations

import re

import pandas as pd
import pytest
import yaml

from shared_run import writing
from snakemake_runner import TINY_CONFIG, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

RUN = yaml.safe_load(TINY_CONFIG.read_text())["run"]


def _planned_rules(dry_run_stdout: str) -> set[str]:
    """Rule names a dry run (`-n`) would execute."""
    return set(re.findall(r"^rule (\w+):", dry_run_stdout, flags=re.M))


def test_dag_produces_every_final_output(tiny_run):
    out = tiny_run / "results" / RUN
    for path in ["organism/training_loss.png", "organism/training_loss.pdf",
                 "organism/evaluation.png", "organism/evaluation_summary.csv",
                 "model/config.json", "data/shapes/annotations/instances_val.json"]:
        assert (out / path).is_file(), f"missing {path}"
    for log in ["generate_world", "train_organism", "evaluate_organism"]:
        assert (out / "logs" / f"{log}.log").stat().st_size > 0, f"empty log {log}"


def test_trained_organism_beats_chance(tiny_run):
    """The tiny organism names objects and answers polling, colour and shape questions far above
    chance (the default organism's numbers are in the README)."""
    summary = pd.read_csv(tiny_run / "results" / RUN / "organism" / "evaluation_summary.csv")
    accuracy = summary.set_index("task")["accuracy"]
    assert accuracy["describe"] > 0.8, accuracy.to_dict()
    assert accuracy["polling"] > 0.8, f"{accuracy.to_dict()} (chance 1/2)"
    assert accuracy["color"] > 0.8, f"{accuracy.to_dict()} (chance 1/4)"
    assert accuracy["shape_vqa"] > 0.8, f"{accuracy.to_dict()} (chance 1/4)"


def test_each_training_stage_learns(tiny_run):
    """The tiny organism's four LLaVA stages each lower their loss (tiny, seed 0: the last losses are
    about 5%, 7%, 43% and 1% of the first ones)."""
    losses = pd.read_csv(tiny_run / "results" / RUN / "model" / "losses.csv")
    assert set(losses.columns) == {"step", "stage", "task", "loss"}
    assert list(dict.fromkeys(losses["stage"])) == ["vision", "text", "align", "instruct"]
    for stage, task, ratio in (("vision", "patch_shape", 0.5), ("text", "all", 0.5), ("align", "all", 0.7),
                               ("instruct", "all", 0.25)):
        curve = losses[(losses["stage"] == stage) & (losses["task"] == task)].sort_values("step")
        assert curve["loss"].tail(3).mean() < ratio * curve["loss"].head(3).mean(), stage


def test_nothing_left_to_do_after_a_full_run(tiny_run):
    proc = snakemake(tiny_run, "-n", "--cores", "1")
    assert _planned_rules(proc.stdout) == set(), proc.stdout


def test_deleted_output_reruns_only_its_rule(tiny_run):
    with writing(tiny_run):          # no other worker copies or plans in the run meanwhile
        _delete_and_rerun(tiny_run)


def _delete_and_rerun(tiny_run):
    (tiny_run / "results" / RUN / "organism" / "evaluation.png").unlink()
    planned = _planned_rules(snakemake(tiny_run, "-n", "--cores", "1").stdout)
    assert planned == {"plot_organism_evaluation", "all"}
    snakemake(tiny_run, "--cores", "1")
    assert (tiny_run / "results" / RUN / "organism" / "evaluation.png").is_file()


def test_forcerun_reruns_the_stage_and_its_dependents_only(tiny_run):
    proc = snakemake(tiny_run, "-n", "--cores", "1", "--forcerun", "evaluate_organism")
    assert _planned_rules(proc.stdout) == {"evaluate_organism", "plot_organism_evaluation", "all"}


def test_report_is_written(tiny_run):
    snakemake(tiny_run, "--report", "results/report.html", "--cores", "1")
    html = (tiny_run / "results" / "report.html").read_text(errors="replace")
    assert "training_loss.png" in html and "evaluation.png" in html
