"""The naive reference: one full forward (or one `model.generate`) per condition, no sharing, no
batching, written to be obviously right. The tests assert the fast engine equals it; the
benchmarks report the speed ratio against it.

    logits = reference_logits(model, adapter, input_ids, pixel_values, condition)      # (T, V)
    tokens = reference_generate(model, adapter, input_ids, pixel_values, condition, max_new_tokens=32)
    logits = reference_logits(model, adapter, input_ids, None, condition, **adapter.image_inputs(encoding))

Positions are whatever the model computes for itself (Qwen2-VL: its own `get_rope_index`), so the
engine's explicit positions are checked against transformers' own.

Knockout here does not use the engine's mask code: a dense (heads, Q, K) "blocked" table is filled
straight from the Knockout objects and plain softmax attention is computed with it (batch 1),
causal and, in the text model's sliding-window layers, windowed (a query at p sees keys
p - window + 1 .. p, the rule of transformers' `sliding_window_overlay`), from the config alone.
Families whose own mask is not causal (Gemma 3's bidirectional image block, `bidirectional_image_block`)
keep the boolean mask transformers builds for the model (from `token_type_ids`) instead.
Generation keeps every position in its cache (a plain `DynamicCache()`, not the model's
window-trimmed one), so a cache slot is a sequence position here too.
Ablation uses `replace_embeddings` (a pre-hook on the language model's prefill).
Generation stops at any EOS id of the model (`adapter.eos_token_ids`) unless told otherwise.
"""
from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache
from transformers.integrations.sdpa_attention import repeat_kv

from ..models.adapters.config_values import token_ids
from .attention import model_constraint_blocked, use_attention_function
from .conditions import ConditionLike, as_condition
from .edit import by_kind
from .decoding import EosIds, until_eos
from .knockout import Knockout
from .positions import explicit_positions, open_start


def _positions_below(positions, limit: int) -> list[int]:
    """All positions < limit in a Positions value (explicit list or From)."""
    if (start := open_start(positions)) is not None:
        return list(range(start, limit))
    return [p for p in explicit_positions(positions).tolist() if p < limit]


def dense_knockout_attention(knockouts: list[Knockout], n_layers: int, sliding_window: int | None = None,
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


@contextlib.contextmanager
def reference_interventions(adapter, condition: ConditionLike):
    """Apply one condition to a batch-1 run, the plain way: each kind's `reference` (`edit.Edit`)."""
    condition = as_condition(condition)
    with contextlib.ExitStack() as stack:
        for kind, (edits,) in by_kind([condition.edits]):
            stack.enter_context(kind.reference(adapter, edits))
        yield


def _model_inputs(adapter, input_ids, pixel_values, image_inputs: dict) -> dict:
    if pixel_values is not None:
        image_inputs = {**image_inputs, "pixel_values": pixel_values}
    return adapter.model_inputs(input_ids, **image_inputs)


@torch.no_grad()
def reference_logits(
    model, adapter, input_ids, pixel_values, condition: ConditionLike = None, **image_inputs
) -> torch.Tensor:
    """(T, V) logits of one full forward of one input under `condition`."""
    with reference_interventions(adapter, condition):
        return model(**_model_inputs(adapter, input_ids, pixel_values, image_inputs)).logits[0]


@torch.no_grad()
def reference_generate(
    model,
    adapter,
    input_ids,
    pixel_values,
    condition: ConditionLike = None,
    max_new_tokens: int = 32,
    eos_token_id: EosIds = None,
    **image_inputs,
) -> list[int]:
    """Greedy `model.generate` of one input under `condition`; generated ids up to and including the
    first EOS (any of `eos_token_id`, an int or a list; default: every EOS id of the model)."""
    eos = (list(adapter.eos_token_ids) or None) if eos_token_id is None else eos_token_id
    pad = adapter.text_config.pad_token_id
    if pad is None:
        pad = token_ids(eos)[0] if token_ids(eos) else None
    with reference_interventions(adapter, condition):
        sequences = model.generate(
            **_model_inputs(adapter, input_ids, pixel_values, image_inputs),
            attention_mask=torch.ones_like(input_ids),
            past_key_values=DynamicCache(),  # keeps every position, also under a sliding window
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    return until_eos(sequences[0, input_ids.shape[1] :].tolist(), eos)
