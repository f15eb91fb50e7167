"""Activation patching: write activations recorded in a source run into the same site of this run.

    patch = patch_from(engine, source, target, "resid_post.1", aligned_image_positions(adapter, a_ids, b_ids))
    engine.logits(target, [None, patch])                 # B as is, B with A's object tokens at layer 1
    Patch("resid_post.1", positions=[5, 6], values=v)    # values (2, hidden): any source

Positions are aligned through the adapter's token layout: `aligned_image_positions` pairs the k-th
image token of the source with the k-th of the target (the same cell for single-grid families) and
refuses two images with different token counts (tiled / dynamic-resolution families: another
image size is another layout). An edit kind (`edit.SiteEdit`): the engine shares every position
before the first patched one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .edit import SiteEdit
from .positions import explicit_positions
from .reading import Capture


@dataclass(frozen=True, eq=False)
class Patch(SiteEdit):
    """Replace `site`'s tensor at `positions` (explicit cache slots) by `values` (len(positions), ...), in order."""

    site: str
    positions: Sequence[int] | torch.Tensor
    values: torch.Tensor

    def __post_init__(self):
        given = torch.as_tensor(list(self.positions) if isinstance(self.positions, range) else self.positions).flatten()
        if len(given) != self.values.shape[0]:
            raise ValueError(f"{len(given)} positions but {self.values.shape[0]} patched values")
        if len(given) > 1 and not bool((given.diff() > 0).all()):
            raise ValueError("patch positions must be strictly increasing (values follow their order)")

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.site,)

    def validate(self, adapter, length: int) -> None:
        site = adapter.site(self.site)
        if not site.sequence:
            raise ValueError(f"{site.name} has no sequence positions to patch")
        positions = explicit_positions(self.positions)
        if len(positions) and int(positions[-1]) >= length:
            raise IndexError(f"patch position {int(positions[-1])} beyond the {length}-token input")

    def apply(self, site: str, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        positions = explicit_positions(self.positions).to(at.device)
        inside = (positions >= at[0]) & (positions <= at[-1])
        out = x.clone()
        out[positions[inside] - at[0]] = self.values[inside.cpu()].to(x.device, x.dtype)
        return out


def aligned_image_positions(adapter, source_ids: torch.Tensor, target_ids: torch.Tensor,
                            tokens: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(source positions, target positions) of the image tokens `tokens` (indices within the image,
    None = all), paired through the token layout; a clear error when the two images have different
    numbers of tokens (e.g. another size under a tiled or dynamic-resolution family)."""
    (source,), (target,) = adapter.image_positions(source_ids), adapter.image_positions(target_ids)
    if len(source) != len(target):
        raise ValueError(f"{adapter.family}: the source image has {len(source)} image tokens and the target "
                         f"{len(target)}; their positions cannot be aligned (use images the processor maps to "
                         "the same token layout, or give explicit positions)")
    index = torch.arange(len(source)) if tokens is None else torch.as_tensor(list(tokens), dtype=torch.long)
    return source[index], target[index]


@torch.no_grad()
def record_site(engine, prepared, site: str, positions) -> torch.Tensor:
    """(len(positions), ...) of `site` in one plain forward of `prepared` (batch 1), at `positions`
    (ascending): a `reading.Capture` of that site."""
    wanted = explicit_positions(positions)
    read = Capture([site], wanted)
    with read.reading(engine.adapter):
        engine.adapter.language_model_forward(prepared.inputs_embeds, position_ids=prepared.rope.span(0, prepared.length),
                                              use_cache=False)
    values = read.record[site] if site in read.record else torch.empty(0)
    if values.shape[0] != len(wanted):
        raise IndexError(f"{len(wanted)} positions asked, {values.shape[0]} found in the {prepared.length}-token source")
    return values


def patch_from(engine, source, target, site: str, positions: tuple | Sequence[int],
               ) -> Patch:
    """A `Patch` of `target` carrying `site` of the `source` run (both `PreparedInput`s).
    `positions`: (source positions, target positions), e.g. `aligned_image_positions(...)`, or one
    list for both (the same prompt layout)."""
    if isinstance(positions, tuple) and len(positions) == 2 and not isinstance(positions[0], int):
        source_positions, target_positions = positions
    else:
        source_positions = target_positions = positions
    if len(explicit_positions(source_positions)) != len(explicit_positions(target_positions)):
        raise ValueError("source and target positions differ in number")
    values = record_site(engine, source, site, source_positions)
    return Patch(site, explicit_positions(target_positions), values)
