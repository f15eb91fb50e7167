"""config.yaml, the JSON schema and the library's spec dataclasses describe the same keys."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def _spec_sections():
    """(schema $defs name, spec dataclass, fields the workflow fills in itself)."""
    from vlminterp.data.shapes import ShapesWorldSpec
    from vlminterp.models.organism import OrganismSpec

    return [("dataset.shapes", ShapesWorldSpec, {"seed"}),
            ("model.organism", OrganismSpec, {"seed", "num_threads"})]


def _section(dotted: str) -> dict:
    schema = SCHEMA
    for key in dotted.split("."):
        schema = schema["properties"][key]
    return schema


def _walk(schema, path=""):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}" if path else name)


def test_every_key_is_documented():
    undocumented = [path for path, sub in _walk(SCHEMA) if path and "description" not in sub]
    assert not undocumented, f"schema keys without description: {undocumented}"


def test_every_object_rejects_unknown_keys():
    open_objects = [path for path, sub in _walk(SCHEMA)
                    if sub.get("type") == "object" and sub.get("additionalProperties") is not False]
    assert not open_objects, f"objects that accept unknown keys: {open_objects}"


@pytest.mark.parametrize("name, spec_cls, filled", _spec_sections(), ids=lambda v: str(v))
def test_schema_section_matches_spec_dataclass(name, spec_cls, filled):
    section = _section(name)["properties"]
    fields = {f.name: f for f in dataclasses.fields(spec_cls) if f.name not in filled}
    assert set(section) == set(fields), (
        f"schema {name} and {spec_cls.__name__} disagree: "
        f"only in schema {set(section) - set(fields)}, only in spec {set(fields) - set(section)}")
    default_spec = spec_cls()
    for key, sub in section.items():
        expected = getattr(default_spec, key)
        if key == "task_weights":
            expected = dict(expected)
        elif isinstance(expected, tuple):
            expected = list(expected)
        assert sub.get("default") == expected, f"default of {name}.{key}: schema {sub.get('default')!r} != spec {expected!r}"


@pytest.mark.parametrize("config_file", [ROOT / "config.yaml", ROOT / "tests" / "configs" / "tiny.yaml",
                                         *sorted((ROOT / "configs").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_shipped_configs_are_valid(config_file):
    validate(yaml.safe_load(config_file.read_text()), str(SCHEMA_PATH))


def test_defaults_are_filled_in():
    config = {"run": "x", "dataset": {"kind": "shapes"}, "model": {"kind": "organism"}}
    validate(config, str(SCHEMA_PATH), set_default=True)
    assert config["seed"] == 0
    assert config["evaluation"]["batch_size"] == 64
    assert config["dataset"]["shapes"]["image_size"] == _section("dataset.shapes")["properties"]["image_size"]["default"]
