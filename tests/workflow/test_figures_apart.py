"""Summaries apart from figures (#23), on the tiny config's DAG without running it: every output the
DAG lists (`snakemake --summary`) is created empty with one timestamp, then a dry run (`-n`, mtime
triggers: the files have no run metadata) that forces every plot rule plans the plot rules and the
default target only: no summary, and no paper comparison, downstream of a figure; and plot rules
write figures only (--summary names each output's rule). Two CLI calls
(each builds the whole DAG: about 9 s of CPU)."""
from __future__ import annotations

import os
import re

import pytest

from snakemake_runner import snakemake
from vlminterp.workflow.registry import STAGES

pytestmark = [pytest.mark.slow, pytest.mark.workflow]


def planned_rules(dry_run_stdout: str) -> set[str]:
    return set(re.findall(r"^(?:local)?rule (\w+):", dry_run_stdout, flags=re.M))


def test_forcing_the_figures_plans_only_the_figures(tmp_path):
    lines = snakemake(tmp_path, "--summary", "--cores", "1").stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    rows = [line.split("\t") for line in lines[header + 1:] if line.strip()]
    outputs, rule_of = [row[0] for row in rows], {row[0]: row[2] for row in rows}
    assert "results/tiny/papers/paper_comparison.csv" in outputs
    tables = [path for path in outputs if rule_of[path].startswith("plot_") and not path.endswith((".png", ".pdf"))]
    assert tables == [], "plot rules write only figures"
    for path in map(tmp_path.joinpath, outputs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (1e9, 1e9))   # one timestamp: nothing is newer than what reads it
    plots = sorted({rule for stage in STAGES for rule in stage.targets if rule.startswith("plot_")})
    assert {"plot_token_ablation", "plot_logit_lens", "plot_attention_blocking", "plot_attention_fractions",
            "plot_group_knockouts", "plot_localization", "plot_reprompting", "plot_object_patching"} <= set(plots)
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--rerun-triggers", "mtime", "--forcerun", *plots)
    planned = planned_rules(proc.stdout)
    assert "compare_with_papers" not in planned, "the paper comparison reads a figure's output"
    assert planned == set(plots) | {"all"}, proc.stdout[-3000:]
