"""Capture as a reading edit: one record keyed by site name, for the prefill and every decode step.

    read = Capture(["resid_post.2", "embed", "head_out.1"], positions=image_positions)
    engine.logits(prepared, [Condition([steer, read])])   # or alone: engine.generate(prepared, [read], 8)
    read.record["resid_post.2"]        # (P, d) at the captured positions of that row, ascending
    with read.reading(adapter):        # or around any plain batch-1 forward / generate
        model(**inputs)
    read.record.positions("resid_post.2")   # their cache slots
    Capture(["resid_post.0"], positions=From(T))          # generated tokens only (decode steps)

A `Capture` belongs to one condition (one batch row). It changes nothing (`earliest_position` is
None), so it never shortens the prefix the engine shares: positions inside that prefix are read from
the one prefix forward every row shares (they are the same for every row), the others from its row.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .edit import SiteEdit
from .positions import Positions


class SiteRecord:
    """Tensors read at named sites: `record[site]` (N, ...) over the captured slots, ascending."""

    def __init__(self):
        self._chunks: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)

    def add(self, site: str, slots: torch.Tensor, values: torch.Tensor) -> None:
        self._chunks[site].append((slots.cpu(), values))

    def _merged(self, site: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._chunks.get(site):
            raise KeyError(f"nothing captured at {site!r}; captured: {sorted(self._chunks)}")
        slots = torch.cat([s for s, _ in self._chunks[site]])
        values = torch.cat([v for _, v in self._chunks[site]])
        order = torch.argsort(slots, stable=True)
        return slots[order], values[order.to(values.device)]

    def __getitem__(self, site: str) -> torch.Tensor:
        return self._merged(site)[1]

    def positions(self, site: str) -> torch.Tensor:
        return self._merged(site)[0]

    def __contains__(self, site: str) -> bool:
        return bool(self._chunks.get(site))

    def keys(self) -> list[str]:
        return sorted(k for k, v in self._chunks.items() if v)


@dataclass(frozen=True, eq=False)
class Capture(SiteEdit):
    """Read `sites` at `positions` (an edit that writes nothing); results in `record`."""

    capture_sites: Sequence[str]
    positions: Positions
    to_cpu: bool = False
    record: SiteRecord = field(default_factory=SiteRecord)
    writes: ClassVar[bool] = False

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.capture_sites)

    def earliest_position(self) -> int | None:
        return None  # reads only: the engine's shared prefix is read once (engine._prefix)

    def reading(self, adapter):
        """A context in which every plain (batch-1) forward or `generate` of the model is read."""
        return type(self).reference(adapter, [self])

    def validate(self, adapter, length: int) -> None:
        for name in self.capture_sites:
            if not adapter.site(name).sequence:
                raise ValueError(f"{name} has no sequence positions to capture at")
        super().validate(adapter, length)

    def apply(self, site: str, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        mask = self.mask(at)
        values = x[mask].detach().clone()
        self.record.add(site, at[mask], values.cpu() if self.to_cpu else values)
        return x


