"""Sets of sequence positions (cache slots) that interventions act on: explicit or open-ended.

    From(prompt_length)                    # every position from there on, generated tokens included
    explicit_positions([5, 3, 3])          # tensor([3, 5]): sorted, unique (empty for From)
    members = PositionSet([[1, 2], From(7), None], device)   # one set per batch row (None: empty)
    members.contains(torch.arange(10))     # (rows, 10) bool

Positions are cache slots (= sequence indices, padding included). Knockouts, ablations, captures
and cache surgery all take them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class From:
    """Every position from `start` on (open-ended: covers tokens generated later)."""

    start: int

    def __post_init__(self):
        if self.start < 0:
            raise ValueError(f"From(start) needs start >= 0, got {self.start}")


Positions = Sequence[int] | torch.Tensor | range | From


def explicit_positions(positions: Positions) -> torch.Tensor:
    """The explicit (finite) positions as a sorted, unique LongTensor (empty for `From`)."""
    if isinstance(positions, From):
        return torch.empty(0, dtype=torch.long)
    tensor = torch.as_tensor(list(positions) if isinstance(positions, range) else positions, dtype=torch.long)
    tensor = tensor.flatten().cpu().unique()
    if len(tensor) and int(tensor.min()) < 0:
        raise ValueError("knockout positions must be non-negative sequence indices")
    return tensor


def open_start(positions: Positions) -> int | None:
    return positions.start if isinstance(positions, From) else None


def is_empty(positions: Positions) -> bool:
    return not isinstance(positions, From) and len(explicit_positions(positions)) == 0


class PositionSet:
    """Per-row membership of positions: explicit indices (bool table) OR >= an open start."""

    def __init__(self, per_row: Sequence[Positions | None], device):
        explicit = [explicit_positions(p) if p is not None else torch.empty(0, dtype=torch.long) for p in per_row]
        width = max([int(e.max()) + 1 for e in explicit if len(e)] + [1])
        self.table = torch.zeros(len(per_row), width, dtype=torch.bool)
        for row, e in enumerate(explicit):
            self.table[row, e] = True
        never = torch.iinfo(torch.long).max
        starts = [open_start(p) if p is not None else None for p in per_row]
        self.start = torch.tensor([never if s is None else s for s in starts], dtype=torch.long)
        self.table, self.start = self.table.to(device), self.start.to(device)

    def contains(self, indices: torch.Tensor) -> torch.Tensor:
        """(rows, len(indices)) membership."""
        width = self.table.shape[1]
        inside = indices < width
        hit = self.table[:, indices.clamp(max=width - 1)] & inside[None, :]
        return hit | (indices[None, :] >= self.start[:, None])
