"""KV-cache surgery for image re-prompting (Kaduri et al. K4): keep a chosen subset of positions
per layer, then ask a new question after it, positions continuing, greedy decoding.

    cache = prefill_cache(adapter, input_ids, pixel_values)           # the describe prompt, once
    cache = prefill_cache(adapter, input_ids, **adapter.image_inputs(encoding))   # any family
    kept = select_cache(cache, keep=system_and_prompt + top_image)     # same positions in every layer
    kept = select_cache(cache, keep=[positions_for_layer(l) for l in range(L)])  # or per layer
    answer = continue_generation(adapter, kept, question_ids, max_new_tokens=8)
    answers = continue_batch(adapter, kept, questions_ids, max_new_tokens=8)   # (B, n): B answers

`InterventionEngine.prompt_cache` / `continue_cache` run these for the experiments (one prepared
input, continuations of any lengths, batched at the engine's batch size).

RoPE: kept keys keep the rotation of their ORIGINAL positions (they are gathered, not recomputed),
and the new tokens get the positions they would have had right after the full prompt: sequence
index original_length, original_length + 1, ... plus the prompt's RoPE delta (0 for 1-D RoPE;
Qwen2-VL's M-RoPE: the image's tokens use fewer positions than slots, and text continues after the
largest one). `prefill_cache` returns a `PromptCache`, which remembers those positions. When layers keep
different numbers of positions, each layer's slots are padded to a common width and the padding
slots are knocked out for every new query (so they receive exactly zero attention).
`select_cache` never modifies the source cache, so one prefill serves many selections.

Sliding-window attention: `prefill_cache` keeps every position (not the model's window-trimmed
cache). After a selection drops positions, a slot is no longer a position, and transformers counts
the window in slots, so a continuation whose sequence reaches past the window is refused
(`SlidingWindowError`, naming the window and the length) instead of silently answering with other
keys than the model would see.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache

from ..models.adapters.positions import RopePositions
from ..models.routing import kept_layout, using_layout
from .decoding import EosIds, greedy_continue, until_eos
from .knockout import Knockout, knockout
from .positions import From, Positions, explicit_positions


class PromptCache(DynamicCache):
    """The KV cache of one whole prompt, plus the prompt's RoPE positions (how text continues)."""

    def __init__(self, positions: RopePositions, **kwargs):
        super().__init__(**kwargs)
        self.positions = positions


@torch.no_grad()
def prefill_cache(
    adapter, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **image_inputs
) -> PromptCache:
    """Run one input (batch 1) through the language model and return its KV cache."""
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    positions = adapter.rope_positions(input_ids, **image_inputs)
    embeds = adapter.embed(input_ids, pixel_values, **image_inputs)
    _, cache = adapter.language_model_forward(
        embeds,
        past_key_values=PromptCache(positions),  # every position kept, also under a sliding window
        position_ids=positions.span(0, input_ids.shape[1]),
        use_cache=True,
    )
    return cache


@dataclass
class KeptCache:
    """A cache holding a subset of an input's positions (per layer), ready for a continuation."""

    cache: DynamicCache  # per layer: kept slots (original order), then zero padding up to `width`
    kept_positions: list[torch.Tensor]  # per layer: the original positions kept
    original_length: int  # length of the sequence the source cache was built from
    positions: RopePositions | None = None  # the source prompt's RoPE positions (None: 1-D, 0..T-1)
    routing_layout: object = None  # a planted routing's layout re-indexed to the kept slots (models/routing.py)

    @property
    def rope(self) -> RopePositions:
        return self.positions if self.positions is not None else RopePositions.arange(self.original_length)

    @property
    def width(self) -> int:
        return max(len(k) for k in self.kept_positions)

    def continuing_after_kept(self) -> "KeptCache":
        """This cache with text continuing one position after the highest position kept in any layer
        (Kaduri et al.'s top-k-only cache) instead of after the source prompt: RoPE ids are the
        source prompt's up to there, and text after it continues from their largest id + 1 (for
        1-D RoPE: the sequence index)."""
        end = max(int(k.max()) for k in self.kept_positions) + 1
        ids = self.rope.ids[..., :end]
        return replace(self, original_length=end, positions=RopePositions(ids, int(ids.max()) + 1 - end))

    def padding_knockouts(self) -> list[Knockout]:
        """Block every new query from the padding slots of layers that kept fewer positions."""
        return [
            Knockout(query_positions=From(self.width), key_positions=range(len(kept), self.width), layers=[layer])
            for layer, kept in enumerate(self.kept_positions)
            if len(kept) < self.width
        ]


def select_cache(
    cache: DynamicCache, keep: Positions | Sequence[Positions], positions: RopePositions | None = None
) -> KeptCache:
    """Gather the kept positions of each layer (one Positions for all layers, or one per layer).

    `positions`: the prompt's RoPE positions; taken from a `PromptCache` when not given."""
    layers = cache.layers
    original_length = layers[0].keys.shape[-2]
    if isinstance(keep, Sequence) and len(keep) == len(layers) and all(
        not isinstance(k, int) and not (isinstance(k, torch.Tensor) and k.ndim == 0) for k in keep
    ):
        per_layer = [explicit_positions(k) for k in keep]
    else:
        per_layer = [explicit_positions(keep)] * len(layers)
    if any(len(k) == 0 for k in per_layer):
        raise ValueError("every layer must keep at least one position")
    if any(int(k[-1]) >= original_length for k in per_layer):
        raise IndexError(f"kept positions must be < the cached length {original_length}")
    width = max(len(k) for k in per_layer)
    data = []
    for layer, kept in zip(layers, per_layer):
        index = kept.to(layer.keys.device)
        keys, values = layer.keys[:, :, index], layer.values[:, :, index]
        if len(kept) < width:
            pad = (0, 0, 0, width - len(kept))
            keys, values = torch.nn.functional.pad(keys, pad), torch.nn.functional.pad(values, pad)
        data.append((keys, values))
    if positions is None:
        positions = getattr(cache, "positions", None)
    if positions is not None and positions.length != original_length:
        raise ValueError(f"positions cover {positions.length} tokens but the cache holds {original_length}")
    return KeptCache(DynamicCache(ddp_cache_data=data), per_layer, original_length, positions)


class SlidingWindowError(ValueError):
    """A computation would be wrong under the text model's sliding-window attention."""


def check_sliding_window(adapter, kept: KeptCache, new_tokens: int, max_new_tokens: int) -> None:
    """Refuse to continue a cache that dropped positions when the sequence (source prompt + new
    tokens + answer) is longer than the model's sliding window (see the module docstring)."""
    window = adapter.sliding_window
    length = kept.original_length + new_tokens + max_new_tokens
    dropped = any(len(k) < kept.original_length for k in kept.kept_positions)
    if window is not None and dropped and length > window:
        raise SlidingWindowError(
            f"the text model's sliding_window is {window} tokens but re-prompting a pruned cache needs a "
            f"{length}-token sequence ({kept.original_length} prompt + {new_tokens} question + "
            f"{max_new_tokens} answer): the window would count cache slots, not positions; "
            "use a shorter prompt or answer, or a model without a sliding window"
        )


@torch.no_grad()
def continue_batch(
    adapter,
    kept: KeptCache,
    new_input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosIds = None,
) -> list[list[int]]:
    """Append each row of `new_input_ids` (B, n: B continuations of one length) after the kept
    cache and decode greedily; per row, the ids up to the first EOS (any of `eos_token_id`;
    default: every EOS id of the model). The kept cache is repeated for every row and never
    modified, so the same KeptCache answers any number of questions."""
    if new_input_ids.ndim == 1:
        new_input_ids = new_input_ids[None]
    batch, n = new_input_ids.shape
    adapter.check_operation("kept_caches")
    check_sliding_window(adapter, kept, n, max_new_tokens)
    eos = adapter.eos_token_ids if eos_token_id is None else eos_token_id
    cache = DynamicCache(ddp_cache_data=[(layer.keys.expand(batch, -1, -1, -1).contiguous(),
                                          layer.values.expand(batch, -1, -1, -1).contiguous())
                                         for layer in kept.cache.layers])
    start = kept.original_length
    rope = kept.rope.to(new_input_ids.device)  # text continues after the source prompt (M-RoPE aware)
    positions = rope.span(start, start + n, batch)
    padding = kept.padding_knockouts()
    context = knockout(adapter, [padding]) if padding else contextlib.nullcontext()
    layout = kept.routing_layout or kept_layout(adapter.model, kept.kept_positions, kept.width)
    adapter.observe(new_input_ids[:1])  # text only: no slot of the continuation is an image token
    with context, using_layout(adapter.model, layout):
        hidden, cache = adapter.language_model_forward(
            adapter.embed_tokens(new_input_ids), past_key_values=cache, position_ids=positions, use_cache=True
        )
        generated = greedy_continue(adapter, hidden, cache, start + n, max_new_tokens, eos, positions=rope)
    return [until_eos(row, eos) for row in generated.tolist()]


def continue_generation(
    adapter,
    kept: KeptCache,
    new_input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: EosIds = None,
) -> list[int]:
    """`continue_batch` for one continuation (1, n): its ids up to the first EOS."""
    return continue_batch(adapter, kept, new_input_ids, max_new_tokens, eos_token_id)[0]
