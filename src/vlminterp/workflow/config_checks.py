"""Check a run's config before any job: the JSON schema, then the rules that tie keys together.

`check_config` fills the schema's defaults into the config (as `snakemake.utils.validate` does) and
raises one `ConfigError` listing every problem, one short line each, naming the key path and the
config file(s) it came from, never the whole schema. workflow/rules/common.smk calls it.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from vlminterp.specs import read_schema

SECRET_KEYS = ("api_key_env",)      # values that may be a pasted secret: never echoed
MAX_VALUE_CHARS = 80

#: Keys renamed to one name per generation-length role (description_tokens: a free description;
#: answer_tokens: a short answer): a config still using the old key fails naming both.
RENAMED_KEYS = {
    "neo.screening.max_new_tokens": "neo.screening.description_tokens",
    "neo.ablation.max_new_tokens": "neo.ablation.description_tokens",
    "neo.ablation.polling_new_tokens": "neo.ablation.answer_tokens",
    "kaduri.max_new_tokens": "kaduri.description_tokens",
}


class ConfigError(ValueError):
    """The config is invalid; the message lists each problem on its own line."""


def section_specs() -> dict[str, tuple[type, frozenset[str]]]:
    """Each config section that configures a library stage -> (its spec dataclass, the spec's
    fields the config does not hold: the run's seed and thread count, which the workflow passes,
    and library-only options), as the stage registry declares them
    (`workflow.registry.section_specs`). A section passes whole (`specs.build_spec`); its
    sub-sections are the nested spec dataclasses of its fields (e.g. neo.blocking.fixed_windows:
    `FixedWindow`).

    The schema holds each key's type, default and description; the dataclasses take the defaults
    from it (`specs.configured`), and tests/unit/test_config_schema.py fails when a key, a default
    or a type differs. Sections read by the
    workflow alone (resources, sharding, evaluation, neo.authors_data, dataset.coco, the K
    stages' shared keys: they become the `session` of experiments.shared.session.StageConfig) have no
    spec of their own."""
    from vlminterp.workflow import registry

    return registry.section_specs()


def config_section(config: dict, dotted: str) -> dict:
    """The section at a dotted key path ("neo.ablation")."""
    for key in dotted.split("."):
        config = config[key]
    return config


def _default_filling_validator(schema: dict):
    """A Draft 2020-12 validator that fills in `default`s while validating (jsonschema FAQ)."""
    from jsonschema import Draft202012Validator, validators

    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, property_schema in properties.items():
                if "default" in property_schema:
                    instance.setdefault(name, _copy(property_schema["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    extended = validators.extend(Draft202012Validator, {"properties": properties_with_defaults})
    return extended(schema)


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 3] + "..."


def _key_path(parts: Sequence[Any]) -> str:
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in parts).replace(".[", "[")


def _schema_problems(config: dict, schema: dict) -> Iterator[str]:
    """One line per schema violation: '<key path>: <what is wrong>'."""
    validator = _default_filling_validator(schema)
    for error in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(allowed)):
                where = _key_path([*path, key])
                if where in RENAMED_KEYS:
                    yield f"{where}: renamed {RENAMED_KEYS[where]}; use the new key"
                else:
                    yield f"{where}: unknown key (allowed here: {', '.join(allowed)})"
            continue
        if path and path[-1] in SECRET_KEYS:
            yield (f"{_key_path(path)}: must be the NAME of an environment variable "
                   f"(letters, digits and _, not starting with a digit), never the key itself")
            continue
        where = _key_path(path) or "(top level)"
        if error.validator == "required":
            yield f"{where}: {error.message}"
        elif error.validator == "enum":
            yield f"{where}: {_short(error.instance)} is not one of {error.validator_value}"
        elif error.validator == "type":
            yield f"{where}: {_short(error.instance)} is not of type {error.validator_value}"
        elif error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            relation = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">",
                        "exclusiveMaximum": "<"}[error.validator]
            yield f"{where}: {_short(error.instance)} must be {relation} {error.validator_value}"
        else:
            yield f"{where}: {_short(error.instance)} is invalid ({error.validator} {_short(error.validator_value)})"


def _spec_problem(cls: type, section: dict, where: str, **overrides: Any) -> str | None:
    """The first inconsistency a library spec (ShapesWorldSpec, OrganismSpec) finds in `section`,
    reworded to name the config key ('ShapesWorldSpec.cell_size=...' -> 'dataset.shapes.cell_size')."""
    from vlminterp.specs import build_spec

    try:
        build_spec(cls, section, where=where, **overrides)
    except ValueError as error:
        return re.sub(rf"\b{cls.__name__}\.(\w+)=", rf"{where}.\1 = ", str(error))
    return None


def _section_problems(config: dict) -> Iterator[str]:
    """What the stages' spec dataclasses find wrong in their sections (`section_specs`; the shapes
    world's and the organism's only when the run uses them)."""
    used = {"dataset.shapes": config["dataset"]["kind"] == "shapes",
            "model.organism": config["model"]["kind"] == "organism"}
    for dotted, (cls, _) in section_specs().items():
        if not used.get(dotted, True):
            continue
        overrides = {"seed": config["seed"]} if "seed" in {f.name for f in dataclasses.fields(cls)} else {}
        if dotted == "neo.prompts" and config["neo"]["authors_data"]["questions"]:
            overrides["vqa_questions_file"] = "neo/authors_questions.csv"  # the rules supply the authors' file
        problem = _spec_problem(cls, config_section(config, dotted), dotted, **overrides)
        if problem:
            yield problem


def _cross_key_problems(config: dict) -> Iterator[str]:
    """Rules between keys the schema cannot express (sizes that must agree or divide, limits that
    depend on each other)."""
    yield from _section_problems(config)
    dataset, model = config["dataset"], config["model"]
    shapes_world = dataset["kind"] == "shapes"
    organism = model["kind"] == "organism"
    if shapes_world:
        world = dataset["shapes"]
        max_annotations = config["neo"]["selection"]["max_annotations"]
        if world["max_objects"] > max_annotations:
            yield (f"neo.selection.max_annotations: {max_annotations} is below "
                   f"dataset.shapes.max_objects={world['max_objects']}, so every image with more "
                   f"objects would be dropped from N1-N3 silently; raise it to {world['max_objects']}")
    if organism:
        if shapes_world and dataset["shapes"]["cell_size"] != model["organism"]["patch_size"]:
            cell, patch = dataset["shapes"]["cell_size"], model["organism"]["patch_size"]
            yield (f"dataset.shapes.cell_size: {cell} differs from model.organism.patch_size="
                   f"{patch}; the world's cells are the organism's vision patches, so the two "
                   f"must be equal (and divide dataset.shapes.image_size)")


def _neo_problems(config: dict) -> Iterator[str]:
    """Where the Neo stages' VQA questions, mean vector and splits come from must agree."""
    neo, dataset = config["neo"], config["dataset"]
    authors = neo["authors_data"]
    questions_file = authors["questions"] or neo["prompts"]["vqa_questions_file"]
    if authors["questions"] and neo["prompts"]["vqa_questions_file"]:
        yield ("neo.authors_data.questions supplies the VQA questions file; set "
               f"neo.prompts.vqa_questions_file to null (it is {neo['prompts']['vqa_questions_file']!r})")
    for key, needs in (("neo.selection.include_question_images", neo["selection"]["include_question_images"]),
                       ("neo.prompts.vqa_images: with_question", neo["prompts"]["vqa_images"] == "with_question")):
        if needs and not questions_file:
            yield (f"{key} needs a questions file: set neo.authors_data.questions or "
                   "neo.prompts.vqa_questions_file")
    if neo["ablation"]["mean_vector"] == "authors" and not authors["mean_vector"]:
        yield ("neo.ablation.mean_vector: authors needs neo.authors_data.mean_vector (the authors' file for "
               "this model; they released one for LLaVA-1.5-7B and one for LLaVA-Phi-3-mini)")
    if dataset["kind"] == "coco":
        for key in ("selection", "mean"):
            if neo[key]["split"] != dataset["split"]:
                yield (f"neo.{key}.split: {neo[key]['split']!r} must equal dataset.split={dataset['split']!r} "
                       "for COCO: only that split's images are downloaded")


#: The stages whose model precision `model.stages` may set apart from model.dtype / model.quantization.
PRECISION_STAGES = ("screen_neo_targets", "compute_mean_embedding", "ablate_object_tokens", "apply_logit_lens",
                    "block_object_attention", "kaduri")


def stage_precision(config: dict, stage: str | None = None) -> dict:
    """{"dtype", "quantization"} a stage loads the model with: model.dtype and model.quantization,
    overridden by model.stages.<stage> (the authors ran some stages in 4 bit, others in fp16)."""
    model = config["model"]
    precision = {"dtype": model.get("dtype", "fp32"), "quantization": model.get("quantization", "none")}
    if stage is not None:
        precision.update({k: v for k, v in (model.get("stages") or {}).get(stage, {}).items() if v is not None})
    return precision


def _precision_problems(config: dict) -> Iterator[str]:
    """4-bit loading (bitsandbytes) runs on CUDA only: any stage asking for it on another device
    fails here, before any job, naming the key."""
    stages = config["model"].get("stages") or {}
    for stage in (None, *stages):
        quantization = stage_precision(config, stage)["quantization"]
        if quantization != "none" and config["device"] != "cuda":
            key = "model.quantization" if stage is None else f"model.stages.{stage}.quantization"
            yield (f"{key}: {quantization} needs device: cuda (bitsandbytes quantizes on CUDA GPUs only); this "
                   f"run's device is {config['device']!r}: set {key} to none")
            return


def check_config(config: dict, schema_path: Path, sources: Sequence[str]) -> dict:
    """Fill the schema's defaults into `config` and raise ConfigError listing every problem.

    `sources` names where the config came from (the --configfile files), for the message."""
    schema = read_schema(schema_path)
    problems = list(dict.fromkeys(_schema_problems(config, schema)))
    if not problems:
        problems = list(dict.fromkeys([*_cross_key_problems(config), *_neo_problems(config),
                                       *_precision_problems(config)]))
    if problems:
        origin = ", ".join(str(s) for s in sources) or "the config"
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid config ({origin}; keys documented in {schema_path}):\n{lines}")
    return config


def check_judge_key(config: dict, environ: dict | None = None) -> None:
    """An enabled LLM judge whose API-key variable is unset fails here, before any job runs."""
    judge = config["kaduri"]["llm_judge"]
    variable = judge["api_key_env"]
    environ = os.environ if environ is None else environ
    if judge["enabled"] and variable and not environ.get(variable):
        raise ConfigError(
            f"kaduri.llm_judge.enabled is true but the environment variable {variable} "
            f"(kaduri.llm_judge.api_key_env) is not set: export it, set api_key_env: null "
            f"for an endpoint without a key, or disable the judge")
