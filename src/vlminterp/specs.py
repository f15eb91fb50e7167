"""Config sections and the library's spec dataclasses: one source for each setting.

    @dataclass(frozen=True)
    @configured("neo.blocking")          # every field neo.blocking holds: its default from the schema
    class BlockingSpec: ...
    spec = build_spec(BlockingSpec, config["neo"]["blocking"], where="neo.blocking")   # whole
    check_fields(OrganismSpec, values)      # a saved spec's JSON: ValueError naming unknown fields

workflow/schemas/config.schema.yaml holds each setting's type, default and description; a spec
dataclass declares its fields' Python types and takes the defaults from there (`configured`).
A config section passes whole: a list becomes a tuple, a list of mappings whose field is
`tuple[SomeNamedTuple, ...]` a tuple of those (`BlockingSpec.fixed_windows`), a sub-section the
nested spec dataclass of its field. Which section maps onto which dataclass: `workflow.registry`.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T")

#: The config schema: beside the package in a checkout (Snakemake's `validate` reads it there too).
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigKeyError(ValueError):
    """A config section has a key the target spec does not know."""


def check_fields(cls: type, values: Mapping[str, Any]) -> None:
    """Raise ValueError naming the keys of `values` that are not fields of dataclass `cls`."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}")


def build_spec(cls: type[T], section: Mapping[str, Any], *, where: str, **overrides: Any) -> T:
    """Instantiate dataclass `cls` from `section` plus `overrides`; unknown keys raise, naming them
    as `where.key`; nested sections build nested spec dataclasses (module docstring)."""
    known = {f.name for f in dataclasses.fields(cls)}
    values = {**dict(section), **overrides}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigKeyError(
            f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
            f"{cls.__name__} accepts: {', '.join(sorted(known))}"
        )
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        values[name] = _convert(hints.get(name), value, f"{where}.{name}")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    """A config value as the field typed `hint` takes it (nested dataclass, tuple, named tuples)."""
    if isinstance(value, Mapping):
        nested = _dataclass_in(hint)
        return build_spec(nested, value, where=where) if nested is not None else value
    if isinstance(value, list):
        element = _tuple_element(hint)
        if element is not None and _is_named_tuple(element):
            return tuple(element(**item) if isinstance(item, Mapping) else element(*item) for item in value)
        return tuple(value)
    return value


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a hint names (also inside `X | None`), else None."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    candidates = typing.get_args(hint) if union else (hint,)
    for candidate in candidates:
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _tuple_element(hint: Any) -> Any:
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return args[0] if args else None
    return None


def _is_named_tuple(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


def read_schema(path: Path) -> dict:
    """A YAML schema file, parsed by libyaml where PyYAML has it (the config schema: 0.04 s against
    0.5 s for the pure-Python loader, on every Snakemake start)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=loader)


@functools.cache
def config_schema() -> dict:
    """The config schema (SCHEMA_PATH), read once."""
    if not SCHEMA_PATH.is_file():
        raise FileNotFoundError(f"{SCHEMA_PATH} (the config schema, which holds the spec defaults) is absent: "
                                "vlminterp runs from a checkout (pip install -e .)")
    return read_schema(SCHEMA_PATH)


def schema_section(dotted: str) -> dict:
    """The schema of the config section at a dotted key path ("neo.ablation")."""
    schema = config_schema()
    for key in dotted.split("."):
        schema = schema["properties"][key]
    return schema


def configured(section: str, keys: Mapping[str, str] | None = None):
    """Class decorator, applied before @dataclass: each field that config section `section` holds
    (or, given `keys`, each field it names -> its key there) takes the schema's default, converted
    as `build_spec` converts a config value. A default written in the class as well is a
    TypeError: the schema is the one place for it."""
    def decorate(cls: type[T]) -> type[T]:
        properties = schema_section(section)["properties"]
        hints = typing.get_type_hints(cls)
        names = keys or {name: name for name in cls.__dict__.get("__annotations__", {}) if name in properties}
        for name, key in names.items():
            if name in cls.__dict__:
                raise TypeError(f"{cls.__name__}.{name} writes a default; {section}.{key} in {SCHEMA_PATH.name} "
                                "holds it (remove it from the class)")
            setattr(cls, name, _frozen(_convert(hints[name], properties[key]["default"], f"{section}.{key}")))
        cls.__config_section__ = section
        return cls
    return decorate


def _frozen(value: Any) -> Any:
    """A default as an immutable value: lists as tuples, a mapping where a tuple is due as its pairs."""
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in value.items())
    return value
