"""Every stage of the workflow, declared once: the rule that runs it, its config section and spec
dataclass, the function its rule calls (`workflow.stages`, or "module:function"), the tables it
writes, where its images come from (sharded stages), and the rules whose outputs the default
target asks for. The config checks (`config_checks.section_specs`), the default target
(`get_final_output` in workflow/rules/common.smk), the paper comparison's inputs, the generic rule
script (workflow/scripts/run_stage.py), the GPU smoke benchmark and the SLURM test read this list;
the rules themselves stay explicit in workflow/rules/ (tests/unit/test_stage_registry.py ties the two).

Adding an experiment: its module, its rule(s) in a .smk file (included by the Snakefile), its
config section in the schema, its spec in a light module (no torch, no transformers: the config
checks build it at every Snakemake start; experiments/patching_specs.py), and one `Stage` here
(experiments/object_patching.py is an example). Imports nothing heavy (the Snakefile reads it):
specs and functions are named, resolved on use; tests/unit/test_light_imports.py checks both.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# Named inputs a rule tracks for reruns but its stage function does not take (it gets the dataset
# and the model through its `session` / `model` params).
DEPENDENCY_INPUTS = frozenset({"world", "model", "annotations"})


def _always(config: Mapping) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One stage. `section`/`spec`: its config section and the dataclass that reads it ("module:Class"),
    `unconfigured` the spec's fields the config does not hold (the workflow passes them). `run`: the
    function run_stage.py calls for `rule` (a name in `workflow.stages`, or "module:function").
    `tables`: what it writes under results/<run>/ (gathered, for a sharded stage); `images`: the
    table its images are taken from (a sharded stage, one job per shard of it). `model`: loads the
    model (a scheduler job; cheap rules are `localrule: True`). `targets`: rules whose outputs the default target asks for, when
    `enabled(config)`. `compared_as`: a summary stage's tables, which the paper comparison reads,
    as fields of `paper_comparison.RunSummaries` (one name per table, in order)."""

    name: str
    rule: str
    section: str | None = None
    spec: str | None = None
    unconfigured: frozenset[str] = frozenset()
    run: str | None = None
    tables: tuple[str, ...] = ()
    images: str | None = None
    model: bool = False
    targets: tuple[str, ...] = ()
    enabled: Callable[[Mapping], bool] = field(default=_always, compare=False)
    compared_as: tuple[str, ...] = ()

    def __post_init__(self):
        if self.compared_as and len(self.compared_as) != len(self.tables):
            raise ValueError(f"stage {self.name!r}: compared_as names {len(self.compared_as)} tables of "
                             f"{len(self.tables)}")

    @property
    def sharded(self) -> bool:
        return self.images is not None


def _organism(config: Mapping) -> bool:
    return config["model"]["kind"] == "organism"


STAGES: tuple[Stage, ...] = (
    Stage("effective config", "write_effective_config", targets=("write_effective_config",)),
    Stage("shapes world", "generate_world", "dataset.shapes", "vlminterp.data.shapes:ShapesWorldSpec",
          frozenset({"seed"})),
    Stage("model organism", "train_organism", "model.organism", "vlminterp.organism.spec:OrganismSpec",
          frozenset({"seed", "num_threads"}), model=True, targets=("plot_training_curve",), enabled=_organism),
    Stage("organism evaluation", "evaluate_organism", tables=("organism/evaluation.csv",), model=True,
          targets=("plot_organism_evaluation",), enabled=_organism),
    # ---- Neo et al. (N1-N3) ----
    Stage("N targets", "select_neo_targets", "neo.selection", "vlminterp.data.coco:SelectionSpec",
          frozenset({"seed", "targets_per_image"})),
    Stage("N1 noising filter", "screen_neo_targets", "neo.screening",
          "vlminterp.experiments.neo.specs:ScreeningSpec", frozenset({"seed"}), run="screen_targets",
          tables=("neo/selection.csv", "neo/screening.csv"), model=True, targets=("screen_neo_targets",),
          enabled=lambda config: config["neo"]["screening"]["enabled"]),
    Stage("N object cells", "map_object_cells", "neo.cells", "vlminterp.experiments.shared.cells:CellSpec", run="object_cells",
          tables=("neo/cells.csv",)),
    Stage("N mean embedding", "compute_mean_embedding", "neo.mean", "vlminterp.experiments.neo.specs:MeanSpec",
          tables=("neo/mean_embedding.safetensors",), model=True),
    Stage("N1 authors' mean vector", "compare_mean_vectors", targets=("compare_mean_vectors",),
          enabled=lambda config: bool(config["neo"]["authors_data"]["mean_vector"])),
    Stage("N1 token ablation", "ablate_object_tokens", "neo.ablation", "vlminterp.experiments.neo.specs:AblationSpec",
          frozenset({"seed"}), run="token_ablation", tables=("neo/ablation/ablation.csv",), images="neo/selection.csv",
          model=True, targets=("gather_token_ablation", "summarize_token_ablation", "plot_token_ablation")),
    Stage("N1 summary", "summarize_token_ablation", run="ablation_summary",
          tables=("neo/ablation/summary.csv", "neo/ablation/controls.csv", "neo/ablation/by_category.csv"),
          compared_as=("ablation", "ablation_controls", "ablation_by_category")),
    Stage("N2 logit lens", "apply_logit_lens", "neo.logit_lens", "vlminterp.experiments.neo.specs:LensSpec",
          run="logit_lens", tables=("neo/logit_lens/topk.csv.gz", "neo/logit_lens/scores.csv"),
          images="neo/selection.csv", model=True,
          targets=("gather_logit_lens_scores", "summarize_logit_lens", "plot_logit_lens", "write_logit_lens_pages")),
    Stage("N2 summary", "summarize_logit_lens", run="lens_summary",
          tables=("neo/logit_lens/scores_by_category.csv", "neo/logit_lens/null_control.csv",
                  "neo/logit_lens/summary.csv")),
    Stage("N3 attention blocking", "block_object_attention", "neo.blocking",
          "vlminterp.experiments.neo.specs:BlockingSpec", run="attention_blocking",
          tables=("neo/blocking/blocking.csv",), images="neo/selection.csv", model=True,
          targets=("gather_attention_blocking", "summarize_attention_blocking", "plot_attention_blocking")),
    Stage("N3 summary", "summarize_attention_blocking", run="blocking_summary", tables=("neo/blocking/summary.csv",)),
    # ---- Kaduri et al. (K1-K4) ----
    Stage("K1 attention fractions", "measure_attention_fractions", "kaduri.attention",
          "vlminterp.experiments.kaduri.specs:AttentionFractionSpec", run="attention_fractions",
          tables=("kaduri/attention/fractions.csv",), images="kaduri/images.csv", model=True,
          targets=("summarize_attention_fractions", "plot_attention_fractions")),
    Stage("K1 summary", "summarize_attention_fractions", run="attention_summary",
          tables=("kaduri/attention/summary.csv",)),
    Stage("K2 group knockouts", "run_group_knockouts", "kaduri.knockout",
          "vlminterp.experiments.kaduri.specs:KnockoutSpec", run="group_knockouts",
          tables=("kaduri/knockout/descriptions.csv",), images="kaduri/images.csv", model=True,
          targets=("summarize_group_knockouts", "plot_group_knockouts")),
    Stage("K2 summary", "summarize_group_knockouts", run="knockout_summary",
          tables=("kaduri/knockout/summary.csv", "kaduri/knockout/controls.csv", "kaduri/knockout/by_category.csv"),
          compared_as=("knockout", "knockout_controls", "knockout_by_category")),
    Stage("K2 LLM judge", "judge_group_knockouts_llm", "kaduri.llm_judge",
          "vlminterp.experiments.kaduri.specs:LLMJudgeConfig", tables=("kaduri/knockout/llm_judge.csv",),
          enabled=lambda config: config["kaduri"]["llm_judge"]["enabled"]),
    Stage("K2 LLM judge summary", "summarize_group_knockouts_llm", run="llm_judge_summary",
          tables=("kaduri/knockout/llm_judge_summary.csv", "kaduri/knockout/llm_judge_controls.csv",
                  "kaduri/knockout/llm_judge_by_category.csv"), targets=("summarize_group_knockouts_llm",),
          enabled=lambda config: config["kaduri"]["llm_judge"]["enabled"],
          compared_as=("knockout_llm", "knockout_llm_controls", "knockout_llm_by_category")),
    Stage("K3 localization", "localize_objects", "kaduri.localization",
          "vlminterp.experiments.kaduri.specs:LocalizationSpec", run="localization",
          tables=("kaduri/localization/peaks.csv",), images="kaduri/images.csv", model=True,
          targets=("summarize_localization", "plot_localization")),
    Stage("K3 summary", "summarize_localization", run="localization_summary",
          tables=("kaduri/localization/summary.csv", "kaduri/localization/controls.csv",
                  "kaduri/localization/by_category.csv"),
          compared_as=("localization", "localization_controls", "localization_by_category")),
    Stage("K4 re-prompting", "answer_reprompt_questions", "kaduri.reprompt",
          "vlminterp.experiments.kaduri.specs:RepromptSpec", run="reprompting",
          tables=("kaduri/reprompt/answers.csv",), images="kaduri/images.csv", model=True,
          targets=("summarize_reprompting", "plot_reprompting")),
    Stage("K4 summary", "summarize_reprompting", run="reprompt_summary",
          tables=("kaduri/reprompt/summary.csv", "kaduri/reprompt/controls.csv", "kaduri/reprompt/by_category.csv"),
          compared_as=("reprompt", "reprompt_controls", "reprompt_by_category")),
    # ---- cross-image activation patching of object tokens (on the Neo targets) ----
    Stage("object patching", "patch_object_tokens", "patching", "vlminterp.experiments.patching_specs:PatchingSpec",
          frozenset({"seed"}), run="vlminterp.experiments.object_patching:patching_stage",
          tables=("patching/patching.csv",), model=True, targets=("summarize_object_patching", "plot_object_patching"),
          enabled=lambda config: config["patching"]["enabled"]),
    Stage("object patching summary", "summarize_object_patching",
          run="vlminterp.experiments.object_patching:summary_stage",
          tables=("patching/summary.csv", "patching/by_category.csv")),
    # ---- what reads the stages' tables ----
    Stage("paper comparison", "compare_with_papers", targets=("compare_with_papers",)),
    Stage("method validation", "validate_methods", targets=("validate_methods",),  # the direct organism: by name
          enabled=lambda config: _organism(config) and config["model"]["organism"].get("routing", "direct") != "direct"),
)

# Config sections several stages read (each stage's own section is its entry's).
SHARED_SECTIONS: dict[str, tuple[str, frozenset[str]]] = {
    "neo.prompts": ("vlminterp.experiments.neo.prompts:PromptSpec", frozenset()),
}


def resolve(name: str) -> Any:
    """The object a "module:attribute" string names."""
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)


def by_rule(rule: str) -> Stage:
    """The stage `rule` runs; a KeyError naming the rule when none is registered."""
    for stage in STAGES:
        if stage.rule == rule:
            return stage
    raise KeyError(f"rule {rule!r} has no stage in vlminterp.workflow.registry.STAGES")


def section_specs() -> dict[str, tuple[type, frozenset[str]]]:
    """Each config section read by a spec dataclass -> (the dataclass, its fields the config does not hold)."""
    named = {stage.section: (stage.spec, stage.unconfigured) for stage in STAGES if stage.section}
    return {section: (resolve(spec), fields) for section, (spec, fields) in {**named, **SHARED_SECTIONS}.items()}


def stage_function(rule: str) -> Callable:
    """The function `rule`'s stage runs, importing only its module (`workflow.stages` imports
    a stage's heavy modules inside the function, so a summary's rule loads no model library)."""
    stage = by_rule(rule)
    if stage.run is None:
        raise KeyError(f"stage {stage.name!r} (rule {rule}) has no stages function to run")
    return resolve(stage.run if ":" in stage.run else f"vlminterp.workflow.stages:{stage.run}")


def run_rule(rule: str, *, params: Mapping, inputs: Mapping, wildcards: Mapping) -> tuple:
    """Call the `workflow.stages` function of `rule`'s stage with the rule's params, its named
    inputs (but `DEPENDENCY_INPUTS`) and its wildcards as keywords (`seed` only where the function
    takes it: every rule passes it to `runtime.rule_context`); the tables it returns, as a tuple."""
    function = stage_function(rule)
    keywords = {**{k: v for k, v in inputs.items() if k not in DEPENDENCY_INPUTS}, **params, **wildcards}
    if "seed" not in inspect.signature(function).parameters:
        keywords.pop("seed", None)
    result = function(**keywords)
    return result if isinstance(result, tuple) else (result,)
