"""Attention-edge knockout: block chosen query positions from chosen key positions in chosen layers.

    ko = Knockout(query_positions=[T - 1], key_positions=object_positions, layers=range(11, 21))
    with knockout(adapter, ko):                         # same knockout for every batch row
        logits = model(**inputs).logits
    with knockout(adapter, [[ko_a], [ko_b, ko_c], []]):  # row 0: ko_a; row 1: ko_b and ko_c; row 2: none
        ...
    # generated tokens never see the image (decode steps only; the prefill is untouched):
    Knockout(query_positions=From(prompt_length), key_positions=image_positions)

Positions are cache slots (= sequence indices, padding included). The mask lives inside the text
model's attention function (see `attention.py`): prefill and cached decode steps alike, sdpa or
eager, all heads or `heads=[...]`. Blocked probabilities are exactly zero; a query row is never left
without keys (its own slot is kept).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .attention import edit_attention
from .edit import Edit
from .positions import Positions, PositionSet, explicit_positions, is_empty, open_start


@dataclass(frozen=True, eq=False)
class Knockout(Edit):
    """Block attention from `query_positions` to `key_positions` in `layers` (None = all), `heads` (None = all).

    An edit kind (`edit.Edit`) on the sites `attn.{l}`: the engine applies a batch's knockouts as one
    mask per row (`KnockoutMasks`), the reference as a dense table in plain attention
    (`dense_knockout.dense_knockout_attention`)."""

    query_positions: Positions
    key_positions: Positions
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(f"attn.{l}" for l in self.layers) if self.layers is not None else ("attn.*",)  # every layer

    def earliest_position(self) -> int | None:
        return self.earliest_query()

    def validate(self, adapter, length: int) -> None:
        for layer in self.layers if self.layers is not None else ():
            _check_index(layer, adapter.n_layers, "layer")
        for head in self.heads if self.heads is not None else ():
            _check_index(head, adapter.n_heads, "head")

    @classmethod
    def batched(cls, adapter, rows: Sequence[Sequence["Knockout"]]):
        device = adapter.embed_tokens.weight.device
        return edit_attention(adapter, KnockoutMasks(rows, adapter.n_layers, adapter.n_heads, device))

    @classmethod
    def reference(cls, adapter, edits: Sequence["Knockout"]):
        from .attention import use_attention_function
        from .dense_knockout import dense_knockout_attention

        attention = dense_knockout_attention(list(edits), adapter.n_layers, adapter.sliding_window,
                                             adapter.sliding_layers, adapter=adapter)
        return use_attention_function(adapter, attention, label="vlminterp_reference")

    def is_noop(self) -> bool:
        return (
            is_empty(self.query_positions)
            or is_empty(self.key_positions)
            or (self.layers is not None and len(list(self.layers)) == 0)
            or (self.heads is not None and len(list(self.heads)) == 0)
        )

    def earliest_query(self) -> int | None:
        """The first query position this knockout can change (None if it changes nothing)."""
        if self.is_noop():
            return None
        candidates = [int(p) for p in explicit_positions(self.query_positions)[:1]]
        if (start := open_start(self.query_positions)) is not None:
            candidates.append(start)
        return min(candidates)


class _KnockoutSlot:
    """The j-th knockout of every row, as per-row tensors (rows without a j-th knockout are inert)."""

    def __init__(self, knockouts: Sequence[Knockout | None], n_layers: int, n_heads: int, device):
        rows = len(knockouts)
        self.layer_on = torch.zeros(rows, n_layers, dtype=torch.bool)
        self.head_on = None
        if any(k is not None and k.heads is not None for k in knockouts):
            self.head_on = torch.ones(rows, n_heads, dtype=torch.bool)
        for row, ko in enumerate(knockouts):
            if ko is None or ko.is_noop():
                continue
            layers = range(n_layers) if ko.layers is None else [_check_index(i, n_layers, "layer") for i in ko.layers]
            self.layer_on[row, list(layers)] = True
            if ko.heads is not None:
                self.head_on[row] = False
                self.head_on[row, [_check_index(h, n_heads, "head") for h in ko.heads]] = True
        self.layer_on = self.layer_on.to(device)
        self.head_on = self.head_on.to(device) if self.head_on is not None else None
        self.queries = PositionSet([k.query_positions if k is not None else None for k in knockouts], device)
        self.keys = PositionSet([k.key_positions if k is not None else None for k in knockouts], device)
        self._keys_for: tuple[int, torch.Tensor | None] = (-1, None)

    def blocked(self, layer: int, q_slots: torch.Tensor, num_keys: int) -> torch.Tensor | None:
        active = self.layer_on[:, layer]
        if not bool(active.any()):
            return None
        queries = self.queries.contains(q_slots) & active[:, None]  # (rows, Q)
        if self._keys_for[0] != num_keys:  # same for every layer of one forward: compute once
            self._keys_for = (num_keys, self.keys.contains(torch.arange(num_keys, device=q_slots.device)))
        keys = self._keys_for[1]  # (rows, K)
        pairs = queries[:, None, :, None] & keys[:, None, None, :]  # (rows, 1, Q, K)
        if self.head_on is not None:
            pairs = pairs & self.head_on[:, :, None, None]  # (rows, H, Q, K)
        return pairs


def _check_index(index: int, size: int, what: str) -> int:
    index = int(index)
    if not -size <= index < size:
        raise IndexError(f"{what} {index} out of range for {size} {what}s")
    return index % size


class KnockoutMasks:
    """An `AttentionEdit` blocking, per batch row, the union of that row's knockouts."""

    def __init__(self, rows: Sequence[Sequence[Knockout]], n_layers: int, n_heads: int, device="cpu"):
        self.num_rows = len(rows)
        n_slots = max([len(r) for r in rows] + [0])
        self.slots = [
            _KnockoutSlot([r[j] if j < len(r) else None for r in rows], n_layers, n_heads, device)
            for j in range(n_slots)
        ]

    def blocked(self, layer, q_slots, num_keys, batch_size, num_heads):
        if self.num_rows not in (1, batch_size):
            raise ValueError(f"knockout given for {self.num_rows} rows but the batch has {batch_size}")
        out = None
        for slot in self.slots:
            pairs = slot.blocked(layer, q_slots, num_keys)
            if pairs is not None:
                out = pairs if out is None else out | pairs
        return out

    def observe(self, layer, q_slots, probabilities) -> None:
        return None


def _as_rows(knockouts: Knockout | Sequence[Sequence[Knockout]]) -> list[list[Knockout]]:
    if isinstance(knockouts, Knockout):
        return [[knockouts]]
    rows = [list(r) for r in knockouts]
    if not all(isinstance(k, Knockout) for r in rows for k in r):
        raise TypeError("knockout() takes a Knockout or a list (one per batch row) of lists of Knockouts")
    return rows


@contextlib.contextmanager
def knockout(adapter, knockouts: Knockout | Sequence[Sequence[Knockout]]) -> Iterator[KnockoutMasks]:
    """Apply knockouts inside the text model's attention; one list per batch row, or one for all rows."""
    device = adapter.embed_tokens.weight.device
    masks = KnockoutMasks(_as_rows(knockouts), adapter.n_layers, adapter.n_heads, device)
    with edit_attention(adapter, masks):
        yield masks
