"""Streaming statistics in O(d) memory: running sum and count in float64.

    running = StreamingMean()
    for batch in loader:
        running.update(adapter.image_features(batch))   # (..., d): every leading index is one sample
    mean_vector = running.mean()                          # (d,) float64; .mean(dtype=torch.float32)
"""
from __future__ import annotations

import torch


class StreamingMean:
    """Mean of d-vectors over any number of updates, never holding more than one update."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.count = 0

    def update(self, values: torch.Tensor) -> None:
        flat = values.detach().reshape(-1, values.shape[-1]).to(torch.float64)
        batch_sum = flat.sum(dim=0)
        if self.total is None:
            self.total = batch_sum
        elif self.total.shape != batch_sum.shape:
            raise ValueError(f"vector size changed from {self.total.shape[0]} to {batch_sum.shape[0]}")
        else:
            self.total += batch_sum
        self.count += flat.shape[0]

    def mean(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        if self.total is None or self.count == 0:
            raise ValueError("StreamingMean.mean() before any update")
        return (self.total / self.count).to(dtype)

    def state_dict(self) -> dict:
        return {"total": self.total, "count": self.count}

    @classmethod
    def from_state_dict(cls, state: dict) -> "StreamingMean":
        out = cls()
        out.total, out.count = state["total"], int(state["count"])
        return out
