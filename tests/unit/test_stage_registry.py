"""The stage registry (vlminterp.workflow.registry) against the rules as written in the Snakefile
and workflow/rules/*.smk (read as text: fast): every registered rule exists, every rule that loads
the model is registered as such, every rule run by the generic script names a stages function."""
from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

from vlminterp.workflow import stages
from vlminterp.experiments.paper_comparison import RunSummaries
from vlminterp.workflow.registry import STAGES, by_rule, resolve

ROOT = Path(__file__).resolve().parents[2]
RULE = re.compile(r"^( *)rule (\w+):\n((?:\1 +.*\n|\s*\n)*)", re.M)


def rule_bodies() -> dict[str, str]:
    """Each rule's name -> its indented body, from the workflow's files."""
    bodies = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        for match in RULE.finditer(path.read_text()):
            assert match.group(2) not in bodies, f"rule {match.group(2)} defined twice"
            bodies[match.group(2)] = match.group(3)
    return bodies


def test_the_rule_reader_sees_every_rule():
    bodies = rule_bodies()
    assert len(bodies) == len(re.findall(r"^\s*rule \w+:", "".join(
        p.read_text() for p in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]), re.M))
    assert "model_resources()" in bodies["ablate_object_tokens"] and "localrule: True" in bodies["plot_reprompting"]


def test_every_registered_rule_exists():
    bodies = rule_bodies()
    named = {stage.rule for stage in STAGES} | {rule for stage in STAGES for rule in stage.targets}
    assert sorted(named - set(bodies)) == []
    assert len({stage.rule for stage in STAGES}) == len(STAGES), "one entry per rule"


def test_model_rules_and_registry_agree():
    """A rule that loads the model (scheduler resources of a model job) is a registered model stage,
    and a registered model stage's rule asks for those resources; none is a local rule."""
    bodies = rule_bodies()
    loading = {name for name, body in bodies.items() if "model_resources()" in body}
    registered = {stage.rule for stage in STAGES if stage.model}
    assert loading == registered
    assert not [name for name in loading if "localrule: True" in bodies[name]]


def test_generic_script_rules_name_a_stages_function():
    bodies = rule_bodies()
    generic = {name for name, body in bodies.items() if "scripts/run_stage.py" in body}
    assert generic == {stage.rule for stage in STAGES if stage.run}
    for rule in generic:
        run = by_rule(rule).run
        function = resolve(run) if ":" in run else getattr(stages, run)
        params = set(re.findall(r"^\s+(\w+)=", bodies[rule].split("params:")[1].split("threads:")[0]
                                .split("log:")[0], re.M))
        accepted = set(inspect.signature(function).parameters)
        assert params - {"seed"} <= accepted, f"rule {rule}: params {params - accepted} not taken by {function.__name__}"


def test_sharded_stages_declare_their_images_and_tables():
    for stage in STAGES:
        if stage.sharded:
            assert stage.model and stage.run and stage.tables, stage
            assert f"logs(\"{stage.rule}/{{shard}}\")" in rule_bodies()[stage.rule], stage.rule


def test_paper_comparison_fields_are_the_registered_summary_tables():
    frames = {f.name for f in dataclasses.fields(RunSummaries) if "DataFrame" in str(f.type)}
    compared = [stage for stage in STAGES if stage.compared_as]
    assert frames == {name for stage in compared for name in stage.compared_as}
    assert all(stage.rule.startswith("summarize_") for stage in compared), "the comparison reads summaries only"

