"""A condition = the interventions applied to one batch row: ablations and/or knockouts.

    Condition(ablations=(Ablation(pos, mean),), label="object b=0")
    Condition(knockouts=(Knockout([T - 1], pos, layers=range(5, 15)),))
    as_condition(Knockout(...)); as_condition(None)  # the unablated run

Consumed by both the batched engine and the naive reference.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .ablation import Ablation
from .knockout import Knockout


@dataclass(frozen=True, eq=False)
class Condition:
    ablations: tuple[Ablation, ...] = ()
    knockouts: tuple[Knockout, ...] = ()
    label: str = ""

    def earliest_touched(self) -> int | None:
        """The first sequence position whose computation this condition can change (None: nothing)."""
        touched = [a.earliest_position() for a in self.ablations] + [k.earliest_query() for k in self.knockouts]
        touched = [t for t in touched if t is not None]
        return min(touched) if touched else None


ConditionLike = Condition | Ablation | Knockout | Sequence[Ablation | Knockout] | None


def as_condition(item: ConditionLike) -> Condition:
    if isinstance(item, Condition):
        return item
    if item is None:
        return Condition()
    if isinstance(item, Ablation):
        return Condition(ablations=(item,))
    if isinstance(item, Knockout):
        return Condition(knockouts=(item,))
    items = list(item)
    unknown = [x for x in items if not isinstance(x, (Ablation, Knockout))]
    if unknown:
        raise TypeError(f"a condition holds Ablation and Knockout objects, got {type(unknown[0]).__name__}")
    return Condition(
        ablations=tuple(x for x in items if isinstance(x, Ablation)),
        knockouts=tuple(x for x in items if isinstance(x, Knockout)),
    )
