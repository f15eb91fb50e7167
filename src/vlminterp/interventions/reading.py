"""Capture as a reading edit: one record keyed by site name, for the prefill and every decode step.

    read = Capture(["resid_post.2", "embed", "head_out.1"], positions=image_positions)
    engine.logits(prepared, [Condition([steer, read])])   # or alone: engine.generate(prepared, [read], 8)
    read.record["resid_post.2"]        # (P, d) at the captured positions of that row, ascending
    with read.reading(adapter):        # or around any plain batch-1 forward / generate
        model(**inputs)
    read.record.positions("resid_post.2")   # their cache slots
    Capture(["resid_post.0"], positions=From(T))          # generated tokens only (decode steps)
    Capture(["attn.3"], [T - 1]).record["attn.3"]         # (n, heads, keys) attention probabilities
    Capture(["image_features"], From(0)).reading(adapter) # around adapter.image_features: (G, n, d)

`attn.{l}` is read inside the attention function for the chosen query rows only (never T x T x H),
with sdpa as with eager, and after any knockout of the same row (the probabilities the model used);
rows from calls of different widths (decode steps) are zero-padded to the widest. `image_features`
has no positions: each call is kept whole (it is computed by engine.prepare, so only `reading`).

A `Capture` belongs to one condition (one batch row). It changes nothing (`earliest_position` is
None), so it never shortens the prefix the engine shares: positions inside that prefix are read from
the one prefix forward every row shares (they are the same for every row), the others from its row.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .attention import edit_attention
from .edit import SiteEdit
from .sites import edit_site
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
        width = max(v.shape[-1] for _, v in self._chunks[site])  # attention rows: keys seen so far
        values = torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[-1])) for _, v in self._chunks[site]])
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
                raise ValueError(f"{name} is computed when the image is embedded (engine.prepare, "
                                 f"adapter.image_features), not by the conditions: read it with "
                                 f"Capture([{name!r}]).reading(adapter) around that call")
        super().validate(adapter, length)

    @classmethod
    @contextlib.contextmanager
    def batched(cls, adapter, rows: Sequence[Sequence["Capture"]]) -> Iterator[None]:
        """Tensor sites as every `SiteEdit`; `attn.{l}` read inside the attention function; sites
        without positions (image_features) every call whole."""
        kinds = {name: adapter.site(name) for row in rows for e in row for name in e.sites}
        tensor_rows = [[_Only(e, [n for n in e.sites if kinds[n].sequence and kinds[n].hook != "attention"])
                        for e in row] for row in rows]
        with contextlib.ExitStack() as stack:
            stack.enter_context(super().batched(adapter, tensor_rows))
            if any(site.hook == "attention" for site in kinds.values()):
                stack.enter_context(edit_attention(adapter, _AttentionReader(rows, kinds)))
            for name, site in kinds.items():
                if not site.sequence:
                    readers = [e for row in rows for e in row if name in e.sites]
                    stack.enter_context(edit_site(adapter, site, _whole_reader(name, readers)))
            yield

    @classmethod
    @contextlib.contextmanager
    def reference(cls, adapter, edits: Sequence["Capture"]) -> Iterator[None]:
        """`edits` read every plain forward in the block, which must be one sequence (batch 1)."""
        def one_sequence(x, start):
            if x.shape[0] != 1:
                raise ValueError(f"Capture.reading reads one sequence (batch 1), the forward has {x.shape[0]}; "
                                 "for a batch, one list of captures per row: Capture.batched(adapter, rows)")

        with edit_site(adapter, "embed", one_sequence), cls.batched(adapter, [list(edits)]):
            yield

    def apply(self, site: str, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        mask = self.mask(at)
        values = x[mask].detach().clone()
        self.record.add(site, at[mask], values.cpu() if self.to_cpu else values)
        return x


def _Only(capture: Capture, sites: Sequence[str]) -> Capture:
    """The same capture (same record) restricted to `sites`."""
    return Capture(tuple(sites), capture.positions, capture.to_cpu, capture.record)


class _AttentionReader:
    """An attention edit that blocks nothing and records, per batch row, the probabilities
    (n, heads, keys) of the rows' Captures' query positions at their `attn.{l}` sites."""

    def __init__(self, rows: Sequence[Sequence[Capture]], sites: dict):
        # per row: (capture, {layer: the names it asked for, e.g. "attn.-1" for the last layer})
        self.rows = []
        for row in rows:
            self.rows.append([])
            for edit in row:
                names: dict[int, list[str]] = defaultdict(list)
                for name in edit.sites:
                    if sites[name].hook == "attention":
                        names[sites[name].layer].append(name)
                self.rows[-1].append((edit, names))

    def blocked(self, layer, q_slots, num_keys, batch_size, num_heads):
        return None

    def observe(self, layer, q_slots, probabilities) -> None:
        at = q_slots.cpu()
        for row, edits in enumerate(self.rows):
            for edit, layers in edits:
                if layer not in layers or not edit.touches(at):
                    continue
                rows = torch.nonzero(edit.mask(at)).flatten()
                probs = probabilities(rows.to(q_slots.device))  # (B, H, n, K)
                values = probs[row if probs.shape[0] > 1 else 0].transpose(0, 1).detach()  # (n, H, K)
                for name in layers[layer]:
                    edit.record.add(name, at[rows], values.cpu() if edit.to_cpu else values)


def _whole_reader(name: str, readers: Sequence[Capture]):
    def read(x: torch.Tensor, start) -> None:
        values = (x if x.ndim == 3 else x[None]).detach()  # (G, n, d): images, tiles or one flat image
        for edit in readers:
            seen = len(edit.record.positions(name)) if name in edit.record else 0
            edit.record.add(name, torch.arange(seen, seen + values.shape[0]), values.cpu() if edit.to_cpu else values)

    return read
