"""Sliding-window attention (a Mistral text model whose 8-token window is far shorter than the
~30-token prompt): the reference computes the model's truth, the engine equals it, K4's cache
surgery refuses where slots stop being positions.

The bug these guard against: transformers' own cache for a sliding-window model keeps only the
last window - 1 positions, so an engine that builds its shared prefix there and takes cache slot =
position knocks out the wrong keys (or none at all); a reference with the same slot rule and no
window in its dense attention cannot see it.
"""
from __future__ import annotations

import pytest
import torch
from helpers import continuation_ids, mixed_conditions

from vlminterp.interventions import Capture, From, InterventionEngine, Knockout, reference_generate, reference_logits
from vlminterp.interventions.cache import SlidingWindowError, continue_generation, prefill_cache, select_cache

VARIANT = "tiny-mistral-window"
WINDOW = 8


def _setup(synthetic, make_inputs, attn="sdpa"):
    model, processor, adapter = synthetic(VARIANT, attn)
    inputs = make_inputs(processor, adapter)
    return model, processor, adapter, inputs["input_ids"], inputs["pixel_values"]


def test_the_variant_slides_a_window_shorter_than_the_prompt(synthetic, make_inputs):
    _, _, adapter, ids, _ = _setup(synthetic, make_inputs)
    assert adapter.sliding_window == WINDOW
    assert adapter.sliding_layers == frozenset(range(adapter.n_layers))
    assert ids.shape[1] > 3 * WINDOW


@torch.no_grad()
def test_reference_attention_applies_the_window_as_the_model_does(synthetic, make_inputs):
    """The reference's dense attention (knockouts) must reproduce the model's own sliding mask: blocking
    keys already outside every query's window changes nothing, against the model's plain forward."""
    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs)
    length = ids.shape[1]
    plain = model(input_ids=ids, pixel_values=pixels).logits[0]
    outside = Knockout([length - 1], range(0, length - WINDOW))  # outside the last query's window
    assert (reference_logits(model, adapter, ids, pixels, outside) - plain).abs().max() < 1e-4
    inside = Knockout([length - 1], range(length - WINDOW + 1, length - 1))
    assert (reference_logits(model, adapter, ids, pixels, inside)[-1] - plain[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_engine_logits_equal_the_reference_under_a_window(attn, synthetic, make_inputs):
    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs, attn)
    length = ids.shape[1]
    in_window = Knockout([length - 1], range(length - WINDOW + 1, length - 1))  # the old engine: no effect
    conditions = [None, in_window, Knockout(range(length - 3, length), range(length - 6, length - 3), layers=[1, 2])]
    conditions += mixed_conditions(adapter, ids)[1:]
    expected = torch.stack([reference_logits(model, adapter, ids, pixels, c) for c in conditions])
    assert (expected[1, -1] - expected[0, -1]).abs().max() > 1e-3  # the knockout has an effect
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels)
    fast = engine.logits(prepared, conditions, positions=None)  # the ablations keep the shared prefix short
    assert (fast - expected).abs().max() < 1e-4
    last_token_only = engine.logits(prepared, conditions[:2])  # prefix: all but the last position
    assert (last_token_only[:, -1] - expected[:2, -1]).abs().max() < 1e-4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_engine_generation_equals_the_reference_under_a_window(attn, synthetic, make_inputs):
    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs, attn)
    length = ids.shape[1]
    conditions = [None, Knockout(From(length - 1), range(length - WINDOW + 1, length - 1)),
                  Knockout(From(length), range(length - 4, length))]
    expected = [reference_generate(model, adapter, ids, pixels, c, max_new_tokens=12, eos_token_id=-1)
                for c in conditions]
    assert expected[1] != expected[0] and expected[2] != expected[0]  # the comparison can fail
    engine = InterventionEngine(model, adapter)
    out = engine.generate(engine.prepare(ids, pixels), conditions, max_new_tokens=12, eos_token_id=-1)
    assert out.tokens == expected
    assert out.prefix_length > WINDOW  # the shared prefix is longer than the window


@torch.no_grad()
def test_attention_capture_through_a_shared_prefix_sees_positions(synthetic, make_inputs):
    """The last prompt token's attention, captured while the engine shares all earlier positions, equals
    the row of one plain forward (no cache) and is zero outside the window."""
    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs)
    length = ids.shape[1]
    sites = [f"attn.{l}" for l in range(adapter.n_layers)]
    plain = Capture(sites, [length - 1])
    with plain.reading(adapter):
        model(input_ids=ids, pixel_values=pixels, use_cache=False)
    engine = InterventionEngine(model, adapter)
    shared = Capture(sites, [length - 1])
    engine.logits(engine.prepare(ids, pixels), [shared])
    for layer in range(adapter.n_layers):
        slots, probabilities = shared.record.positions(f"attn.{layer}"), shared.record[f"attn.{layer}"]
        assert slots.tolist() == [length - 1] and probabilities.shape[-1] == length
        assert (probabilities - plain.record[f"attn.{layer}"]).abs().max() < 1e-5
        assert probabilities[..., : length - WINDOW].abs().max() == 0


def test_cache_surgery_keeps_every_position_and_refuses_a_pruned_cache(synthetic, make_inputs):
    model, processor, adapter, ids, pixels = _setup(synthetic, make_inputs)
    length = ids.shape[1]
    question = continuation_ids(processor, " What is in the image?")
    cache = prefill_cache(adapter, ids, pixels)
    assert cache.layers[0].keys.shape[-2] == length  # not the model's window-trimmed cache
    full = reference_generate(model, adapter, torch.cat([ids, question], 1), pixels, None, max_new_tokens=6,
                              eos_token_id=-1)
    assert continue_generation(adapter, select_cache(cache, range(length)), question, 6, eos_token_id=-1) == full
    image = set(adapter.image_positions(ids)[0].tolist())
    pruned = select_cache(cache, [p for p in range(length) if p not in image])
    total = length + question.shape[1] + 6
    with pytest.raises(SlidingWindowError, match=f"sliding_window is {WINDOW} .*{total}-token"):
        continue_generation(adapter, pruned, question, 6)
