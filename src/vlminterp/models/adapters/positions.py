"""RoPE position ids of one input and how they continue after it (1-D RoPE or Qwen2-VL's M-RoPE).

    positions = adapter.rope_positions(input_ids, **image_inputs)    # a RopePositions
    hidden, cache = adapter.language_model_forward(embeds, position_ids=positions.span(0, T))

A text token appended at sequence index s >= T gets position s + delta in every component (delta
= 0 for 1-D RoPE), so cached continuation (prefix sharing, decoding, cache surgery) is exact for both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class RopePositions:
    """RoPE position ids of one input (batch 1), and how they continue after it.

    `ids` is (1, T) for 1-D RoPE or (3, 1, T) for M-RoPE (Qwen2-VL: temporal, height, width). A
    text token at sequence index s >= T (generated, or appended after a cache) gets position
    s + `delta` in every component; delta = 0 for 1-D RoPE, and for M-RoPE it is (largest prompt
    position + 1) - T, which is what transformers' `get_rope_index` returns as `rope_deltas`.
    """

    ids: torch.Tensor
    delta: int = 0

    @classmethod
    def arange(cls, length: int, device=None) -> "RopePositions":
        return cls(torch.arange(length, device=device)[None], 0)

    @property
    def length(self) -> int:
        return self.ids.shape[-1]

    @property
    def is_multimodal(self) -> bool:
        return self.ids.ndim == 3

    def span(self, start: int, stop: int, batch: int = 1) -> torch.Tensor:
        """Position ids of sequence indices [start, stop) for `batch` rows: (batch, n) or (3, batch, n)."""
        if not 0 <= start <= stop:
            raise ValueError(f"bad span [{start}, {stop})")
        parts = []
        if start < self.length:
            parts.append(self.ids[..., start : min(stop, self.length)])
        if stop > self.length:
            extra = torch.arange(max(start, self.length), stop, device=self.ids.device) + self.delta
            extra = extra.to(self.ids.dtype)[None]
            parts.append(extra.expand(3, 1, -1) if self.is_multimodal else extra)
        ids = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        return ids.expand(3, batch, -1) if self.is_multimodal else ids.expand(batch, -1)

    def to(self, device) -> "RopePositions":
        return RopePositions(self.ids.to(device), self.delta)
