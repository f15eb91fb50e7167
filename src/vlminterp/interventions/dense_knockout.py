"""The reference's knockout (`reference.py`): a dense (heads, Q, K) "blocked" table filled straight
from `Knockout` objects and plain softmax attention computed with it, batch 1, without the engine's
mask code. Apart from reference.py so that `Knockout.reference` reaches it without importing the
reference (which imports every edit kind through `conditions`)."""
from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import repeat_kv

from .attention import model_constraint_blocked
from .positions import explicit_positions, open_start


def _positions_below(positions, limit: int) -> list[int]:
    """All positions < limit in a Positions value (explicit list or From)."""
    if (start := open_start(positions)) is not None:
        return list(range(start, limit))
    return [p for p in explicit_positions(positions).tolist() if p < limit]


def dense_knockout_attention(knockouts: list, n_layers: int, sliding_window: int | None = None,
                             sliding_layers=frozenset(), adapter=None):
    """A plain attention function applying `knockouts` to a batch-1 input, for the oracle; layers in
    `sliding_layers` also hide keys `sliding_window` or more positions behind the query; with
    `adapter`, the model's own constraint (a planted routing, `attention.model_constraint_blocked`)
    is kept as well."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        batch, heads, num_queries, head_dim = query.shape
        num_keys = key.shape[2]
        if batch != 1:
            raise ValueError("the reference attention handles one sequence at a time")
        first_query = num_keys - num_queries  # queries are the last slots of the cache
        blocked = torch.zeros(heads, num_queries, num_keys, dtype=torch.bool)
        for ko in knockouts:
            layers = range(n_layers) if ko.layers is None else [l % n_layers for l in ko.layers]
            if module.layer_idx not in layers:
                continue
            head_list = range(heads) if ko.heads is None else list(ko.heads)
            queries = [q - first_query for q in _positions_below(ko.query_positions, num_keys) if q >= first_query]
            keys = _positions_below(ko.key_positions, num_keys)
            for h in head_list:
                for q in queries:
                    blocked[h, q, keys] = True
        query_slot = torch.arange(first_query, num_keys)[:, None]
        key_slot = torch.arange(num_keys)[None, :]
        if adapter is not None:
            own = model_constraint_blocked(adapter, module.layer_idx, query_slot[:, 0], num_keys, 1)
            if own is not None:
                blocked = blocked | own[0, 0].cpu()[None]
        if getattr(adapter, "bidirectional_image_block", False):
            # Gemma 3: the model's own mask as transformers builds it from token_type_ids (causal, or
            # sliding in local layers, OR the image block), never the engine's construction of it
            disallowed = blocked | ~attention_mask[0, 0].cpu()[None]
        else:
            disallowed = blocked | (key_slot > query_slot)
            if sliding_window is not None and module.layer_idx in sliding_layers:
                disallowed |= key_slot <= query_slot - sliding_window
        disallowed = disallowed.to(query.device)
        # never a fully masked row: a query may always attend to itself
        own = (torch.arange(num_keys)[None, :] == query_slot).to(query.device)
        disallowed = disallowed & ~(disallowed.all(dim=-1, keepdim=True) & own)
        keys_full = repeat_kv(key, heads // key.shape[1])
        values_full = repeat_kv(value, heads // value.shape[1])
        scale = scaling if scaling is not None else head_dim**-0.5
        scores = torch.matmul(query.float(), keys_full.float().transpose(2, 3)) * scale
        scores = scores.masked_fill(disallowed[None], float("-inf"))
        probabilities = torch.softmax(scores, dim=-1)
        output = torch.matmul(probabilities, values_full.float()).to(query.dtype)
        return output.transpose(1, 2).contiguous(), probabilities

    return attention
