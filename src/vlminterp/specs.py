"""Turn a validated config section into a library spec dataclass, naming any bad key.

    spec = build_spec(OrganismSpec, config["model"]["organism"], where="model.organism", seed=0)
    spec = build_spec(BlockingSpec, config["neo"]["blocking"], where="neo.blocking")   # whole
    check_fields(OrganismSpec, values)      # a saved spec's JSON: ValueError naming unknown fields

A config section passes whole: a sub-section becomes the nested spec dataclass of its field
(`StageConfig.prompt: DescribePrompt`), a list becomes a tuple, and a list of mappings whose
field is `tuple[SomeNamedTuple, ...]` becomes a tuple of those (`BlockingSpec.fixed_windows`).
Which section maps onto which dataclass: `config_checks.SECTION_SPECS`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


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
