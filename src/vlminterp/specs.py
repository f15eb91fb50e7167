"""Turn a validated config section into a library spec dataclass, naming any bad key.

    spec = build_spec(OrganismSpec, config["model"]["organism"], where="model.organism", seed=0)
    check_fields(OrganismSpec, values)      # a saved spec's JSON: ValueError naming unknown fields
"""
from __future__ import annotations

import dataclasses
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
    """Instantiate dataclass `cls` from `section` plus `overrides`; unknown keys raise."""
    known = {f.name for f in dataclasses.fields(cls)}
    values = {**dict(section), **overrides}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigKeyError(
            f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
            f"{cls.__name__} accepts: {', '.join(sorted(known))}"
        )
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values)
