"""Config rules the schema cannot express fail at validation, one line each naming the keys
(vlminterp.workflow.config_checks; the CLI side is tests/workflow/test_config_validation.py)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from vlminterp.workflow.config_checks import ConfigError, check_config, check_judge_key

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
TINY = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())


def _checked(edit=lambda c: None) -> dict:
    config = copy.deepcopy(TINY)
    edit(config)
    return check_config(config, SCHEMA, ["tiny.yaml"])


def test_valid_config_gets_the_schema_defaults():
    config = _checked()
    assert config["device"] == "cpu"
    assert config["model"]["organism"]["patch_size"] == 16
    assert config["kaduri"]["llm_judge"]["api_key_env"] == "OPENAI_API_KEY"


@pytest.mark.parametrize("edit, line", [
    (lambda c: c["dataset"]["shapes"].update(image_size=100),
     "dataset.shapes.cell_size = 16: must be positive and divide image_size=100"),
    (lambda c: c["dataset"]["shapes"].update(max_objects=4),
     "neo.selection.max_annotations: 3 is below dataset.shapes.max_objects=4"),
    (lambda c: (c["dataset"]["shapes"].update(cell_size=8)),
     "dataset.shapes.cell_size: 8 differs from model.organism.patch_size=16"),
    (lambda c: c["dataset"]["shapes"].update(max_objects=3, shapes=["circle", "square"]),
     "dataset.shapes.max_objects = 3: exceeds the 2 shapes"),
    (lambda c: c["model"]["organism"].update(text_heads=5),
     "model.organism.text_heads = 5: must divide text_hidden_size=64"),
], ids=["image-not-multiple-of-cell", "annotations-below-objects", "cell-is-not-patch",
        "more-objects-than-shapes", "heads-do-not-divide-width"])
def test_cross_key_problem_is_one_line_naming_the_keys(edit, line):
    with pytest.raises(ConfigError) as raised:
        _checked(edit)
    message = str(raised.value)
    assert f"  - {line}" in message, message
    assert "tiny.yaml" in message and len(message.splitlines()) == 2, message


def test_every_schema_problem_is_listed_once_without_the_schema():
    def edit(c):
        c.update(sed=1, seed=-1)
        c["dataset"].update(kind="imagenet")
    with pytest.raises(ConfigError) as raised:
        _checked(edit)
    lines = str(raised.value).splitlines()[1:]
    assert sorted(lines) == ["  - dataset.kind: 'imagenet' is not one of ['shapes', 'coco']",
                     "  - sed: unknown key (allowed here: dataset, device, evaluation, kaduri, "
                     "model, neo, patching, resources, run, seed, sharding)",
                     "  - seed: -1 must be >= 0"]


@pytest.mark.parametrize("name, valid", [("OPENAI_API_KEY", True), ("_my_key2", True),
                                         ("sk-proj-abc123", False), ("2KEY", False),
                                         ("MY KEY", False)])
def test_api_key_env_must_look_like_a_variable_name(name, valid):
    def edit(c):
        c["kaduri"]["llm_judge"] = {"api_key_env": name}
    if valid:
        _checked(edit)
    else:
        with pytest.raises(ConfigError) as raised:
            _checked(edit)
        assert name not in str(raised.value)


def test_enabled_judge_needs_its_variable():
    config = _checked(lambda c: c["kaduri"].update(llm_judge={"enabled": True}))
    with pytest.raises(ConfigError, match="OPENAI_API_KEY .* is not set"):
        check_judge_key(config, environ={})
    check_judge_key(config, environ={"OPENAI_API_KEY": "x"})
    config["kaduri"]["llm_judge"]["enabled"] = False
    check_judge_key(config, environ={})


@pytest.mark.parametrize("old, new", [(("neo", "screening", "max_new_tokens"), "neo.screening.description_tokens"),
                                      (("neo", "ablation", "max_new_tokens"), "neo.ablation.description_tokens"),
                                      (("neo", "ablation", "polling_new_tokens"), "neo.ablation.answer_tokens"),
                                      (("kaduri", "max_new_tokens"), "kaduri.description_tokens")])
def test_an_old_generation_length_key_names_its_new_name(old, new):
    def edit(c):
        section = c
        for key in old[:-1]:
            section = section.setdefault(key, {})
        section[old[-1]] = 5
    with pytest.raises(ConfigError) as raised:
        _checked(edit)
    assert str(raised.value).splitlines()[1:] == [f"  - {'.'.join(old)}: renamed {new}; use the new key"]
