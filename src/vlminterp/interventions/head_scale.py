"""Attention-head output scaling: multiply one head's output by a factor (0 = ablate, 2 = amplify).

    HeadScale(layer=3, head=1, factor=0.5)                      # every position
    HeadScale(layer=3, head=1, factor=2.0, positions=[T - 1])   # the last prompt token only

The kind added to show the protocol: this file and one parametrized oracle test (test_edits.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .edit import SiteEdit
from .positions import From, Positions


@dataclass(frozen=True, eq=False)
class HeadScale(SiteEdit):
    layer: int
    head: int
    factor: float
    positions: Positions = field(default_factory=lambda: From(0))

    @property
    def sites(self) -> tuple[str, ...]:
        return (f"head_out.{self.layer}",)

    def apply(self, site: str, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        out = x.clone()  # (S, heads, head_dim)
        out[:, self.head] = torch.where(self.mask(at)[:, None], x[:, self.head] * self.factor, x[:, self.head])
        return out
