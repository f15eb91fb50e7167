"""config.yaml, the JSON schema and the library's spec dataclasses describe the same keys; the schema
alone writes each setting's default (`specs.configured`)."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def _spec_sections():
    """(config section, spec dataclass, spec fields the config does not hold): every section."""
    from vlminterp.workflow.config_checks import section_specs

    return [(name, cls, filled) for name, (cls, filled) in section_specs().items()]


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


def _as_config(value, like=None):
    """A spec value as the config writes it (tuples as lists, named tuples as mappings, pairs as a
    mapping where the config has one: OrganismSpec.task_weights)."""
    if isinstance(like, dict) and isinstance(value, tuple):
        return dict(value)
    if hasattr(value, "_asdict"):
        return {k: _as_config(v) for k, v in value._asdict().items()}
    if isinstance(value, tuple):
        return [_as_config(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_config(v) for k, v in value.items()}
    return value


def _compare(name: str, section: dict, spec_cls, filled=frozenset()) -> list[str]:
    """Where a schema section and a spec dataclass differ: keys, defaults, nested sections."""
    fields = {f.name: f for f in dataclasses.fields(spec_cls) if f.name not in filled}
    problems = []
    if set(section["properties"]) != set(fields):
        problems.append(f"{name}: only in schema {set(section['properties']) - set(fields)}, "
                        f"only in {spec_cls.__name__} {set(fields) - set(section['properties'])}")
    default_spec = spec_cls(**({"base_url": "x", "model": "m"} if spec_cls.__name__ == "LLMJudgeSpec" else {}))
    for key, sub in section["properties"].items():
        if key not in fields:
            continue
        expected = getattr(default_spec, key)
        if dataclasses.is_dataclass(expected):
            problems += _compare(f"{name}.{key}", sub, type(expected))
            if sub.get("default") != {}:
                problems.append(f"{name}.{key}: a nested section's default must be {{}}, filled by its keys")
        elif sub.get("default") != _as_config(expected, sub.get("default")):
            problems.append(f"default of {name}.{key}: schema {sub.get('default')!r} != spec {_as_config(expected)!r}")
    return problems


@pytest.mark.parametrize("name, spec_cls, filled", _spec_sections(),
                         ids=lambda v: ",".join(sorted(v)) if isinstance(v, frozenset) else str(v))
def test_schema_section_matches_spec_dataclass(name, spec_cls, filled):
    """Every library section: the same keys as its dataclass, the same defaults, nested alike."""
    problems = _compare(name, _section(name), spec_cls, filled)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name, spec_cls, filled", _spec_sections(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_spec_takes_its_defaults_from_its_section(name, spec_cls, filled):
    """One source: every section's dataclass is `configured` from that section, so no default of
    it is written in Python (`configured` refuses one written twice)."""
    assert getattr(spec_cls, "__config_section__", None) == name, f"{spec_cls.__name__} is not @configured({name!r})"


def test_a_default_written_twice_is_refused():
    from vlminterp.specs import configured

    with pytest.raises(TypeError, match=r"Twice\.n_pairs .*patching\.n_pairs"):
        @dataclass(frozen=True)
        @configured("patching")
        class Twice:
            n_pairs: int = 3


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


def _json_types(hint) -> set[str]:
    """The JSON types a field's Python type allows (a tuple of pairs is a mapping in the config)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return set().union(*(_json_types(arg) for arg in typing.get_args(hint)))
    if typing.get_origin(hint) is typing.Literal:
        return {_JSON_TYPES[type(arg)] for arg in typing.get_args(hint)}
    if typing.get_origin(hint) is tuple:
        element = typing.get_args(hint)[0]
        pairs = typing.get_origin(element) is tuple and len(typing.get_args(element)) == 2 and \
            typing.get_args(element)[0] is str and typing.get_args(hint)[-1] is Ellipsis
        return {"object"} if pairs else {"array"}
    return {_JSON_TYPES[hint]}


@pytest.mark.parametrize("name, spec_cls, filled", _spec_sections(), ids=lambda v: v if isinstance(v, str) else "")
def test_field_types_agree_with_the_schema(name, spec_cls, filled):
    """A key's JSON types are its field's Python type (int = integer, X | None = [X, null], ...); the
    config may allow less than the library (neo.selection.max_images: never null, it fixes the shards)."""
    hints = typing.get_type_hints(spec_cls)
    wrong = []
    for key, sub in _section(name)["properties"].items():
        schema_types = set(sub["type"]) if isinstance(sub["type"], list) else {sub["type"]}
        if not schema_types <= _json_types(hints[key]):
            wrong.append(f"{name}.{key}: {spec_cls.__name__} {hints[key]} vs schema {sorted(schema_types)}")
    assert not wrong, "\n".join(wrong)


def test_every_section_maps_onto_a_spec_or_the_session():
    """Each object section of neo: and kaduri: is a spec section (or the workflow's own:
    neo.authors_data); kaduri's shared keys are the session's (StageConfig, DescribePrompt)."""
    from vlminterp.experiments.shared.session import DescribePrompt, StageConfig

    specs = {name for name, _, _ in _spec_sections()}
    for paper in ("neo", "kaduri"):
        for key, sub in _section(paper)["properties"].items():
            if sub.get("type") == "object" and f"{paper}.{key}" != "neo.authors_data":
                assert f"{paper}.{key}" in specs, f"{paper}.{key} has no spec dataclass"
    kaduri = _section("kaduri")["properties"]
    prompt, config = DescribePrompt(), StageConfig(model=None, dataset_dir="", split="")
    assert kaduri["prompt"]["default"] == prompt.text
    assert kaduri["system_prompt"]["default"] == prompt.system_prompt
    assert kaduri["geometry"]["default"] == prompt.geometry
    assert kaduri["description_tokens"]["default"] == prompt.description_tokens
    assert kaduri["batch_size"]["default"] == config.batch_size


def test_a_section_passes_whole():
    """The default config builds every spec from its section as it is, and every value of the
    section reads back from the spec (no key dropped, renamed or injected)."""
    from vlminterp.workflow.config_checks import config_section
    from vlminterp.specs import build_spec

    config = {"run": "x", "dataset": {"kind": "shapes"}, "model": {"kind": "organism"}}
    validate(config, str(SCHEMA_PATH), set_default=True)
    for name, spec_cls, filled in _spec_sections():
        section = config_section(config, name)
        spec = build_spec(spec_cls, section, where=name, **({"seed": 0} if "seed" in filled else {}))
        assert _read_back(section, spec) == section, name


def _read_back(section: dict, spec) -> dict:
    """The section's keys read from the built spec, as config values (nested specs as mappings)."""
    return {key: _read_back(section[key], getattr(spec, key)) if dataclasses.is_dataclass(getattr(spec, key))
            else _as_config(getattr(spec, key), section[key]) for key in section}


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
