"""Embedding replacement (token ablation): overwrite the language model's input embeddings at chosen
positions (post-projector image embeddings for image positions) with a given vector.

    mean = running_mean.mean()                                    # from stats.StreamingMean
    with replace_embeddings(adapter, Ablation(object_positions, mean)):        # all rows
        logits = model(**inputs).logits
    with replace_embeddings(adapter, [[Ablation(pos_a, mean)], [Ablation(pos_b)]]):  # per row; vector=None -> zeros
        ...
    embeds = apply_ablations(embeds, [[Ablation(...)], []])       # the pure function the engine uses

The context manager is a forward pre-hook on the language model that acts only on the prefill
(the call that sees the whole prompt), so it also works inside `model.generate`. It is removed on exit.
Where the text model's call also adds image features after early layers (Qwen3-VL's DeepStack:
`visual_pos_masks`, `deepstack_visual_embeds`), the hook leaves the ablated positions out of them
too: an ablated image token keeps nothing of the image. The engine does the same through the
adapter (`VLMAdapter.ablating`), independently of this hook.
As an edit kind (`edit.Edit`, site `embed`) the engine applies it to the positions each call
computes (`apply_ablations(..., start=)`: a shared prefix's suffix), the reference with `replace_embeddings`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .edit import Edit
from .positions import explicit_positions
from .sites import edit_site


@dataclass(frozen=True, eq=False)
class Ablation(Edit):
    """Replace the input embeddings at `positions` with `vector` (shape (hidden,); None = zeros)."""

    positions: Sequence[int] | torch.Tensor
    vector: torch.Tensor | None = None

    @property
    def sites(self) -> tuple[str, ...]:
        return ("embed",)

    def earliest_position(self) -> int | None:
        positions = explicit_positions(self.positions)
        return int(positions[0]) if len(positions) else None

    def validate(self, adapter, length: int) -> None:
        positions = explicit_positions(self.positions)
        if len(positions) and int(positions[-1]) >= length:
            raise IndexError(f"ablation position {int(positions[-1])} beyond the {length}-token input")
        if self.vector is not None and self.vector.shape != (adapter.hidden_size,):
            raise ValueError(f"ablation vector has shape {tuple(self.vector.shape)}, expected ({adapter.hidden_size},)")

    @classmethod
    def batched(cls, adapter, rows: Sequence[Sequence["Ablation"]]):
        def function(embeds: torch.Tensor, start: int) -> torch.Tensor | None:
            end = start + embeds.shape[1]
            if not any(_inside(a, start, end) for row in rows for a in row):
                return None  # e.g. a decode step
            return apply_ablations(embeds, rows, start=start)

        return _ablating(adapter, rows, edit_site(adapter, "embed", function))

    @classmethod
    def reference(cls, adapter, edits: Sequence["Ablation"]):
        return replace_embeddings(adapter, [list(edits)])


@contextlib.contextmanager
def _ablating(adapter, rows: Sequence[Sequence[Ablation]], site_context) -> Iterator[None]:
    """The embedding edit, and the family told which positions each row ablates (`VLMAdapter.ablating`:
    Qwen3-VL leaves its DeepStack injections out there)."""
    positions = [torch.cat([explicit_positions(a.positions).reshape(-1) for a in row] or [torch.zeros(0, dtype=torch.long)])
                 for row in rows]
    with adapter.ablating(positions), site_context:
        yield


def _inside(ablation: Ablation, start: int, end: int) -> bool:
    positions = explicit_positions(ablation.positions)
    return bool(((positions >= start) & (positions < end)).any())


def apply_ablations(inputs_embeds: torch.Tensor, rows: Sequence[Sequence[Ablation]], start: int = 0) -> torch.Tensor:
    """A copy of `inputs_embeds` (B, T, d) with each row's ablations applied (one list per row, or one for all).

    `start`: the position of `inputs_embeds[:, 0]` (a suffix after a shared prefix); positions
    before it are not in the tensor and are skipped."""
    if len(rows) not in (1, inputs_embeds.shape[0]):
        raise ValueError(f"ablations given for {len(rows)} rows but the batch has {inputs_embeds.shape[0]}")
    out = inputs_embeds.clone()
    length, hidden = inputs_embeds.shape[1:]
    for row_index in range(inputs_embeds.shape[0]):
        for ablation in rows[row_index if len(rows) > 1 else 0]:
            positions = explicit_positions(ablation.positions)
            if start:
                positions = positions[positions >= start] - start
            positions = positions.to(out.device)
            if len(positions) and int(positions[-1]) >= length:
                raise IndexError(f"ablation position {int(positions[-1]) + start} beyond the {length + start}-token input")
            if ablation.vector is None:
                out[row_index, positions] = 0
            else:
                if ablation.vector.shape != (hidden,):
                    raise ValueError(f"ablation vector has shape {tuple(ablation.vector.shape)}, expected ({hidden},)")
                out[row_index, positions] = ablation.vector.to(out.device, out.dtype)
    return out


def _as_rows(ablations: Ablation | Sequence[Sequence[Ablation]]) -> list[list[Ablation]]:
    if isinstance(ablations, Ablation):
        return [[ablations]]
    return [list(r) for r in ablations]


def _is_prefill(kwargs: dict) -> bool:
    cache = kwargs.get("past_key_values")
    return cache is None or cache.get_seq_length() == 0


def _without_injections(masks: torch.Tensor, injected: list[torch.Tensor], rows: list[list[Ablation]]) -> dict:
    """The text model's DeepStack arguments (`visual_pos_masks` (B, T), per layer the features of its
    True slots in row-major order) with every ablated position left out."""
    kept = masks.clone()
    for row_index in range(masks.shape[0]):
        for ablation in rows[row_index if len(rows) > 1 else 0]:
            kept[row_index, explicit_positions(ablation.positions).to(kept.device)] = False
    selected = kept[masks]
    return {"visual_pos_masks": kept, "deepstack_visual_embeds": [f[selected.to(f.device)] for f in injected]}


@contextlib.contextmanager
def replace_embeddings(adapter, ablations: Ablation | Sequence[Sequence[Ablation]]) -> Iterator[None]:
    """Apply ablations to the language model's input embeddings on every prefill inside the block."""
    rows = _as_rows(ablations)

    def pre_hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or not _is_prefill(kwargs):
            return None
        kwargs = {**kwargs, "inputs_embeds": apply_ablations(embeds, rows)}
        if kwargs.get("deepstack_visual_embeds") is not None:  # Qwen3-VL's text model: the image re-injected
            kwargs.update(_without_injections(kwargs["visual_pos_masks"], kwargs["deepstack_visual_embeds"], rows))
        return args, kwargs

    handle = adapter.language_model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
