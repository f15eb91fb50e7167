"""Component ablation: zero (or set to a mean) the output of one attention block, one MLP, or one head.

    ComponentAblation("attn_out.2")                          # layer 2's attention output, every position
    ComponentAblation("mlp_out.1", value=mean_mlp_out)       # mean ablation, (hidden,)
    ComponentAblation("head_out.3", head=1)                  # head 1 of layer 3 (its output before o_proj)
    ComponentAblation("head_out.3", head=1, positions=[T - 1], value=mean_head)   # (head_dim,)

An edit kind (`edit.SiteEdit`); positions default to every position (nothing shared).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .edit import SiteEdit
from .positions import From, Positions


@dataclass(frozen=True, eq=False)
class ComponentAblation(SiteEdit):
    """Replace `component`'s output at `positions` by zeros or `value`; `head` picks one head of `head_out.{l}`."""

    component: str  # "attn_out.{l}", "mlp_out.{l}" or "head_out.{l}" (with head)
    head: int | None = None
    value: torch.Tensor | None = None  # (hidden,), or (head_dim,) for a head; None = zeros
    positions: Positions = field(default_factory=lambda: From(0))

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.component,)

    def validate(self, adapter, length: int) -> None:
        site = adapter.site(self.component)
        if site.kind not in ("attn_out", "mlp_out", "head_out"):
            raise ValueError(f"component ablation acts on attn_out.{{l}}, mlp_out.{{l}} or head_out.{{l}}, not {site.name}")
        if (self.head is None) == (site.kind == "head_out"):
            raise ValueError("give head= exactly for head_out.{l} (one head's output)")
        if self.head is not None and not 0 <= self.head < adapter.n_heads:
            raise IndexError(f"head {self.head} out of range for {adapter.n_heads} heads")
        width = adapter.head_dim if self.head is not None else adapter.hidden_size
        if self.value is not None and self.value.shape != (width,):
            raise ValueError(f"ablation value has shape {tuple(self.value.shape)}, expected ({width},)")

    def apply(self, site: str, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        mask = self.mask(at)  # x: (S, hidden), or (S, heads, head_dim) for head_out
        value = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device) if self.value is None else \
            self.value.to(x.device, x.dtype)
        if self.head is None:
            return torch.where(mask[:, None], value, x)
        out = x.clone()
        out[:, self.head] = torch.where(mask[:, None], value, x[:, self.head])
        return out
