"""Residual steering: add a vector to the residual stream at chosen positions after chosen layers.

    Steer(vector, positions=[T - 1], layers=[2, 3])                 # resid_post.2 and resid_post.3
    Steer(vector, From(T), layers=[1], scale=4.0)                    # generated tokens only
    Steer(vector, image_positions, layers=[0], site="resid_pre")     # before layer 0

An edit kind (`edit.SiteEdit`): the engine shares every position before the first steered one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .edit import SiteEdit
from .positions import Positions


@dataclass(frozen=True, eq=False)
class Steer(SiteEdit):
    """x[p] += scale * vector at `positions`, on the sites `{site}.{l}` for each of `layers`."""

    vector: torch.Tensor  # (hidden,)
    positions: Positions
    layers: Sequence[int]
    scale: float = 1.0
    site: str = "resid_post"  # or "resid_pre", "attn_out", "mlp_out"

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(f"{self.site}.{layer}" for layer in self.layers)

    def validate(self, adapter, length: int) -> None:
        super().validate(adapter, length)
        if self.vector.shape != (adapter.hidden_size,):
            raise ValueError(f"steering vector has shape {tuple(self.vector.shape)}, expected ({adapter.hidden_size},)")

    def apply(self, site: str, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        added = x + (self.scale * self.vector).to(x.device, x.dtype)
        return torch.where(self.mask(at)[:, None], added, x)
