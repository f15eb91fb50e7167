"""The edit protocol: a condition is a list of edits, each edit kind one small class.

    class MyEdit(SiteEdit):                       # a kind that rewrites a tensor site (see steering.py)
        def apply(self, site, x, slots): ...      # one row: x (S, ...) at cache slots `slots` -> new x
    class MyEdit(Edit):                           # anything else (see knockout.py: inside attention)
        sites, earliest_position(), validate(adapter, length)
        batched(adapter, rows)    # classmethod: context applying rows[b] (this kind's edits of row b) to batch row b
        reference(adapter, edits) # classmethod: context applying one row's edits to a plain batch-1 run

The engine and the naive reference loop over a condition's edits grouped by kind (`by_kind`) and
enter each kind's context; they know no kind. `earliest_position` is the first cache slot whose
computation the edit can change: the engine computes the positions before the earliest of all
conditions once and shares them (docs/INTERVENTIONS.md). Every kind applies in the prefill and in
every decode step alike (an edit on `From(T)` acts on generated tokens only).

A `SiteEdit` names tensor sites (`VLMAdapter.site`: `embed`, `resid_post.{l}`, `head_out.{l}`, ...)
and says what it does to one row; the row-batched hooks and the plain reference hooks are here.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch

from .positions import Positions, explicit_positions, is_empty, open_start
from .sites import edit_site, slots


class Edit(ABC):
    """One intervention on one run (one batch row). Subclasses are frozen dataclasses."""

    @property
    @abstractmethod
    def sites(self) -> tuple[str, ...]:
        """The named sites this edit acts on (e.g. ("resid_post.3",), ("attn.0", "attn.1"))."""

    @abstractmethod
    def earliest_position(self) -> int | None:
        """The first cache slot whose computation this edit can change (None: it changes nothing)."""

    def validate(self, adapter, length: int) -> None:
        """Raise (naming what is wrong) before any work if this edit cannot apply to a `length`-token input."""
        for name in self.sites:
            adapter.site(name)

    @classmethod
    @abstractmethod
    def batched(cls, adapter, rows: Sequence[Sequence["Edit"]]) -> contextlib.AbstractContextManager:
        """Apply `rows[b]` (this kind's edits of batch row b; one list = every row) in the block."""

    @classmethod
    @abstractmethod
    def reference(cls, adapter, edits: Sequence["Edit"]) -> contextlib.AbstractContextManager:
        """Apply `edits` to a plain batch-1 forward or `generate` in the block (the oracle's way)."""


def by_kind(rows: Sequence[Sequence[Edit]]) -> list[tuple[type[Edit], list[list[Edit]]]]:
    """[(kind, per-row lists of that kind's edits)], kinds in order of first appearance."""
    kinds: dict[type[Edit], None] = {}
    for row in rows:
        for edit in row:
            kinds.setdefault(type(edit), None)
    return [(kind, [[e for e in row if type(e) is kind] for row in rows]) for kind in kinds]


def earliest(positions: Positions) -> int | None:
    """The first slot of a position set (explicit or `From`), None when empty."""
    if is_empty(positions):
        return None
    candidates = [int(p) for p in explicit_positions(positions)[:1]]
    if (start := open_start(positions)) is not None:
        candidates.append(start)
    return min(candidates)


def member(positions: Positions, at: torch.Tensor) -> torch.Tensor:
    """(S,) bool: which slots `at` lie in `positions` (explicit or `From`)."""
    explicit = explicit_positions(positions).to(at.device)
    inside = torch.isin(at, explicit) if len(explicit) else torch.zeros_like(at, dtype=torch.bool)
    if (start := open_start(positions)) is not None:
        inside = inside | (at >= start)
    return inside


class SiteEdit(Edit):
    """An edit that rewrites tensor sites, one row at a time (`apply`); batching and hooks are here."""

    positions: Positions  # cache slots it acts on (explicit or From)
    writes: ClassVar[bool] = True  # False: `apply` only reads (reading.Capture), the tensor is not copied

    def earliest_position(self) -> int | None:
        return earliest(self.positions)

    @abstractmethod
    def apply(self, site: str, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """One row: `x` (S, ...) is the site's tensor at cache slots `at` (S,); return the new tensor."""

    def mask(self, at: torch.Tensor) -> torch.Tensor:
        """(S,) bool: which of the slots `at` are this edit's positions."""
        return member(self.positions, at)

    def touches(self, at: torch.Tensor) -> bool:
        """Whether any of the slots `at` is one of this edit's positions."""
        start = open_start(self.positions)
        if start is not None and int(at[-1]) >= start:
            return True
        explicit = explicit_positions(self.positions)
        return bool(len(explicit)) and bool(torch.isin(explicit.to(at.device), at).any())

    @classmethod
    @contextlib.contextmanager
    def batched(cls, adapter, rows: Sequence[Sequence["SiteEdit"]]) -> Iterator[None]:
        names = sorted({name for row in rows for edit in row for name in edit.sites})
        with contextlib.ExitStack() as stack:
            for name in names:
                per_row = [[e for e in row if name in e.sites] for row in rows]
                stack.enter_context(edit_site(adapter, name, _rows_function(name, per_row)))
            yield

    @classmethod
    @contextlib.contextmanager
    def reference(cls, adapter, edits: Sequence["SiteEdit"]) -> Iterator[None]:
        """One hook per edit and site, each applied to the whole (batch-1) tensor."""
        with contextlib.ExitStack() as stack:
            for edit in edits:
                for name in edit.sites:
                    def function(x, start, edit=edit, name=name):
                        if x.shape[0] != 1:
                            raise ValueError("the reference runs one condition at a time")
                        at = slots(x, 0 if start is None else start)
                        if not edit.touches(at):
                            return None
                        new = edit.apply(name, x[0], at)
                        return new[None] if edit.writes else None

                    stack.enter_context(edit_site(adapter, name, function))
            yield


def _rows_function(name: str, per_row: list[list[SiteEdit]]):
    def function(x: torch.Tensor, start: int | None) -> torch.Tensor | None:
        if len(per_row) not in (1, x.shape[0]):
            raise ValueError(f"edits given for {len(per_row)} rows but the batch has {x.shape[0]}")
        at = slots(x, 0 if start is None else start)
        out = None
        for row in range(x.shape[0]):
            for edit in per_row[row if len(per_row) > 1 else 0]:
                if not edit.touches(at):
                    continue
                if not edit.writes:
                    edit.apply(name, (x if out is None else out)[row], at)
                    continue
                if out is None:
                    out = x.clone()
                out[row] = edit.apply(name, out[row], at)
        return out

    return function
