"""Reading values out of model configs: token id lists and settings that may be dicts or objects."""
from __future__ import annotations


def token_ids(*values) -> tuple[int, ...]:
    """The ids in `values` (each None, an int or a list of ints), in order, without repeats."""
    out: list[int] = []
    for value in values:
        for token in [] if value is None else [value] if isinstance(value, int) else value:
            if int(token) not in out:
                out.append(int(token))
    return tuple(out)


def setting(mapping, key: str, default):
    """`mapping[key]` (a dict) or `mapping.key` (a config object), `default` when absent or None."""
    value = mapping.get(key) if isinstance(mapping, dict) else getattr(mapping, key, None)
    return value if value is not None else default
