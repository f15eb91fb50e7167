"""The paper comparison reads summaries only (#23): on the tiny config's DAG, planned from an empty
directory by one dry run (`-n`, which lists each job's input and output files), every input of
compare_with_papers is an output of a summary rule of N1, K2, K3 or K4, never a gathered per-image
table nor a figure. One CLI call (it builds the whole DAG: a few seconds)."""
from __future__ import annotations

import re

import pytest

from snakemake_runner import snakemake

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

JOB = re.compile(r"^(?:local)?rule (\w+):\n((?:[ \t]+\S.*\n?)*)", re.M)


def planned_files(dry_run_stdout: str) -> list[tuple[str, list[str], list[str]]]:
    """(rule, input files, output files) of each job a dry run lists."""
    jobs = []
    for rule, body in JOB.findall(dry_run_stdout):
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", body, flags=re.M))
        jobs.append((rule, *(fields.get(key, "").split(", ") if fields.get(key) else [] for key in ("input", "output"))))
    return jobs


def test_the_paper_comparison_reads_the_summary_rules_outputs_only(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "1", "results/tiny/papers/paper_comparison.csv")
    jobs = planned_files(proc.stdout)
    rule_of = {path: rule for rule, _, outputs in jobs for path in outputs}
    inputs = next(inputs for rule, inputs, _ in jobs if rule == "compare_with_papers")
    assert {"results/tiny/neo/ablation/ablation.csv", "results/tiny/kaduri/knockout/descriptions.csv"} \
        <= set(rule_of), "the dry run's listing was not read"
    writers = {path: rule_of.get(path, "(no job)") for path in inputs}
    assert set(writers.values()) == {"summarize_token_ablation", "summarize_group_knockouts",
                                     "summarize_localization", "summarize_reprompting"}, writers
