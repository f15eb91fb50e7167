"""Greedy decoding after a prefill, and cutting generated ids at the first EOS: what the engine,
the naive reference and KV-cache surgery (cache.py) share. Its own module so that none of them
imports another for it (engine -> cache -> engine was a cycle).

    generated = greedy_continue(adapter, hidden, cache, next_position, max_new_tokens, eos, positions=rope)
    until_eos([5, 7, 2, 9], eos=2)   # [5, 7, 2]
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from ..models.adapters import VLMAdapter
from ..models.adapters.config_values import token_ids
from ..models.adapters.positions import RopePositions

EosIds = int | Sequence[int] | None  # one id, several, or none at all (never stop early)


def greedy_continue(
    adapter: VLMAdapter,
    hidden: torch.Tensor,
    cache: DynamicCache,
    next_position: int,
    max_new_tokens: int,
    eos_token_id: EosIds,
    positions: RopePositions | None = None,
) -> torch.Tensor:
    """Greedy decoding from the last hidden state of a prefill: (B, <= max_new_tokens) token ids.

    `next_position` is the sequence index of the first generated token; its RoPE position ids come
    from `positions.span` (index + delta, M-RoPE-shaped where needed), or equal the index when
    `positions` is None (1-D RoPE). A row is done at any id of `eos_token_id` (int or list); rows
    that are done keep running (their extra tokens are cut by `until_eos`) until every row is done.
    """
    batch = hidden.shape[0]
    device = hidden.device
    eos = torch.tensor(token_ids(eos_token_id), dtype=torch.long, device=device)
    generated = torch.empty(batch, 0, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        next_ids = adapter.unembed(hidden[:, -1]).argmax(dim=-1)
        generated = torch.cat([generated, next_ids[:, None]], dim=1)
        finished |= torch.isin(next_ids, eos)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        index = next_position + step
        if positions is None:
            position = torch.full((batch, 1), index, dtype=torch.long, device=device)
        else:
            position = positions.span(index, index + 1, batch)
        hidden, cache = adapter.language_model_forward(
            adapter.embed_tokens(next_ids[:, None]), past_key_values=cache, position_ids=position, use_cache=True
        )
    return generated


def until_eos(ids: list[int], eos: EosIds) -> list[int]:
    """`ids` cut after the first of any EOS id in `eos` (an int or a list; the EOS is kept)."""
    stop = set(token_ids(eos))
    for index, token in enumerate(ids):
        if token in stop:
            return ids[: index + 1]
    return ids
