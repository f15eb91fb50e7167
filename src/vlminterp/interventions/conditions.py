"""A condition = the edits applied to one batch row (`edit.Edit`: any kind, on named sites).

    Condition([Steer(v, [T - 1], layers=[3]), Knockout([T - 1], pos, layers=[2])], label="steer+ko")
    Condition(ablations=(Ablation(pos, mean),), label="object b=0")     # the earlier form, still accepted
    Condition(knockouts=(Knockout([T - 1], pos, layers=range(5, 15)),))
    as_condition(Knockout(...)); as_condition([edit_a, edit_b]); as_condition(None)  # the unablated run

Consumed by both the batched engine and the naive reference, which loop over `edits` without
knowing their kinds.
"""
from __future__ import annotations

from collections.abc import Sequence

from .ablation import Ablation
from .edit import Edit
from .knockout import Knockout


class Condition:
    """The edits of one run: `edits` (any kinds), plus the earlier keyword form `ablations=`,
    `knockouts=` (appended to the edits in that order; read back by the properties)."""

    __slots__ = ("edits", "label")

    def __init__(self, edits: Sequence[Edit] = (), *, ablations: Sequence[Ablation] = (),
                 knockouts: Sequence[Knockout] = (), label: str = ""):
        edits = (*ablations, *knockouts, *edits)
        unknown = [e for e in edits if not isinstance(e, Edit)]
        if unknown:
            raise TypeError(f"a condition holds edits (vlminterp.interventions.edit.Edit), got {type(unknown[0]).__name__}")
        object.__setattr__(self, "edits", tuple(edits))
        object.__setattr__(self, "label", label)

    def __setattr__(self, name, value):
        raise AttributeError("Condition is immutable")

    def __repr__(self) -> str:
        return f"Condition({list(self.edits)!r}, label={self.label!r})"

    @property
    def ablations(self) -> tuple[Ablation, ...]:
        return tuple(e for e in self.edits if isinstance(e, Ablation))

    @property
    def knockouts(self) -> tuple[Knockout, ...]:
        return tuple(e for e in self.edits if isinstance(e, Knockout))

    def earliest_touched(self) -> int | None:
        """The first sequence position whose computation this condition can change (None: nothing)."""
        touched = [e.earliest_position() for e in self.edits]
        touched = [t for t in touched if t is not None]
        return min(touched) if touched else None


ConditionLike = Condition | Edit | Sequence[Edit] | None


def as_condition(item: ConditionLike) -> Condition:
    if isinstance(item, Condition):
        return item
    if item is None:
        return Condition()
    if isinstance(item, Edit):
        return Condition((item,))
    items = list(item)
    unknown = [x for x in items if not isinstance(x, Edit)]
    if unknown:
        raise TypeError(f"a condition holds edits (Ablation, Knockout, Steer, ...), got {type(unknown[0]).__name__}")
    return Condition(tuple(items))
