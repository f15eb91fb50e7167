"""The token groups of one single-image prompt (Kaduri et al.): system, image, query, generated.

    groups = adapter.token_groups(input_ids)     # a TokenGroups of sequence positions
    groups.positions("image"); groups.generated(5); groups.labels(length)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOKEN_GROUPS: tuple[str, ...] = ("system", "image", "query", "generated")


@dataclass(frozen=True)
class TokenGroups:
    """The token groups of one single-image prompt (Kaduri et al.), as sequence positions.

    system: BOS and everything before the image (the system prompt and the user-role tag, e.g.
        "USER:"); `bos` is its first position when the prompt starts with BOS (the attention
        sink, reportable on its own).
    image: the image tokens.
    query: everything after the image up to the end of the prompt (the user's text and the
        assistant tag, e.g. "\\nDescribe this image. ASSISTANT:").
    generated: positions prompt_length, prompt_length + 1, ... (`generated(n)`).
    image_markers: positions inside the image's span that are no image token (Idefics3's tile
        markers and global-image tag): no cell, but part of `image_span`, which K1's attention
        shares (`labels`) and K2's knockouts count as the image; empty for most families.
    The four groups (and the markers) partition the sequence.
    """

    prompt_length: int
    bos: tuple[int, ...]
    system: tuple[int, ...]
    image: tuple[int, ...]
    query: tuple[int, ...]
    image_markers: tuple[int, ...] = ()

    @property
    def image_span(self) -> tuple[int, ...]:
        """Every position that carries the image: its tokens and the markers among them (a knockout
        of "the image" blocks both: Idefics3's markers after the first tile have read its tiles)."""
        return tuple(sorted(self.image + self.image_markers))

    def generated(self, n: int) -> tuple[int, ...]:
        """Positions of the first `n` generated tokens."""
        return tuple(range(self.prompt_length, self.prompt_length + n))

    def positions(self, group: str, n_generated: int = 0) -> tuple[int, ...]:
        """Positions of one group by name ("bos", "system", "image", "query", "generated")."""
        if group == "generated":
            return self.generated(n_generated)
        if group in ("bos", "system", "image", "query", "image_markers"):
            return getattr(self, group)
        raise ValueError(f"unknown token group {group!r}; expected bos, image_markers or one of {TOKEN_GROUPS}")

    def labels(self, length: int) -> np.ndarray:
        """Group name of every position < `length` (BOS labelled "bos", the rest of system "system",
        the whole `image_span` "image")."""
        out = np.full(length, "generated", dtype=object)
        for name, positions in (("system", self.system), ("image", self.image_span), ("query", self.query)):
            out[[p for p in positions if p < length]] = name
        out[[p for p in self.bos if p < length]] = "bos"
        return out
