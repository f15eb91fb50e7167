"""The naive reference: one full forward (or one `model.generate`) per condition, no sharing, no
batching, written to be obviously right. The tests assert the fast engine equals it; the
benchmarks report the speed ratio against it.

    logits = reference_logits(model, adapter, input_ids, pixel_values, condition)      # (T, V)
    tokens = reference_generate(model, adapter, input_ids, pixel_values, condition, max_new_tokens=32)
    logits = reference_logits(model, adapter, input_ids, None, condition, **adapter.image_inputs(encoding))

Positions are whatever the model computes for itself (Qwen2-VL: its own `get_rope_index`), so the
engine's explicit positions are checked against transformers' own.

Knockout here does not use the engine's mask code (`dense_knockout.py`): a dense (heads, Q, K) "blocked" table is filled
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

from ..models.adapters.config_values import token_ids
from .conditions import ConditionLike, as_condition
from .edit import by_kind
from .decoding import EosIds, until_eos


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
    if pad is None:  # any id: one unpadded row (eos_token_id=[] and no pad id: Qwen's real configs)
        pad = (token_ids(eos) or adapter.eos_token_ids or (0,))[0]
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
