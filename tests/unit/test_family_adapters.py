"""InternVL and Qwen2-VL through the same interventions as LLaVA: the fast engine equals the naive
reference (logits to 1e-4 in fp32, identical greedy generations), blocked attention is exactly
zero, blocking every later position from the image makes the output image-independent, and KV-cache
surgery continues RoPE positions exactly (M-RoPE included)."""
from __future__ import annotations

import pytest
import torch
from helpers import continuation_ids, image_inputs, mixed_conditions, split_inputs
from transformers import DynamicCache

from vlminterp.interventions import (
    From,
    InterventionEngine,
    Knockout,
    Capture,
    as_condition,
    knockout,
    reference_generate,
    reference_logits,
)
from vlminterp.interventions.cache import continue_generation, prefill_cache, select_cache
from vlminterp.interventions.engine import shared_prefix_length
from vlminterp.models.adapters import InternVLAdapter, Qwen2VLAdapter

FAMILIES = ["tiny-internvl", "tiny-qwen2-vl"]
BACKENDS = ["sdpa", "eager"]


def _setup(synthetic, make_inputs, variant, attn="sdpa", seed=0):
    model, processor, adapter = synthetic(variant, attn)
    inputs = make_inputs(processor, adapter, seed=seed)
    return model, processor, adapter, inputs


def _mixed_conditions(adapter, ids) -> list:
    return mixed_conditions(adapter, ids, k=6)


def test_registry_picks_the_family_adapter(synthetic):
    assert isinstance(synthetic("tiny-internvl")[2], InternVLAdapter)
    assert isinstance(synthetic("tiny-qwen2-vl")[2], Qwen2VLAdapter)


@pytest.mark.parametrize("variant", FAMILIES)
def test_adapter_forward_matches_the_model(variant, synthetic, make_inputs):
    model, _, adapter, inputs = _setup(synthetic, make_inputs, variant)
    ids = inputs["input_ids"]
    vision_inputs = image_inputs(adapter, inputs)
    positions = adapter.rope_positions(ids, **vision_inputs)
    with torch.no_grad():
        expected = model(**inputs).logits
        embeds = adapter.embed(ids, **vision_inputs)
        span = positions.span(0, ids.shape[1])
        hidden, _ = adapter.language_model_forward(embeds, position_ids=span, use_cache=False)
        torch.testing.assert_close(adapter.unembed(hidden), expected, atol=1e-5, rtol=0)
        features = adapter.image_features(**vision_inputs)
    (image,) = adapter.image_positions(ids)
    torch.testing.assert_close(embeds[0, image], features.reshape(-1, adapter.hidden_size))
    if positions.is_multimodal:  # Qwen2-VL: plain 1-D positions would be wrong (the check can fail)
        assert positions.delta < 0
        with torch.no_grad():
            wrong, _ = adapter.language_model_forward(embeds, use_cache=False)
        assert (adapter.unembed(wrong) - expected).abs().max() > 1e-3


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("variant", FAMILIES)
def test_fast_logits_equal_the_reference(variant, attn, synthetic, make_inputs):
    model, _, adapter, inputs = _setup(synthetic, make_inputs, variant, attn)
    ids, pixels, extra = split_inputs(adapter, inputs)
    conditions = _mixed_conditions(adapter, ids)
    expected = torch.stack([reference_logits(model, adapter, ids, pixels, c, **extra) for c in conditions])
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels, **extra)
    fast = engine.logits(prepared, conditions, positions=None)  # every position, prefix shared
    assert shared_prefix_length([as_condition(c) for c in conditions], ids.shape[1]) > 0
    assert fast.shape == expected.shape
    assert (fast - expected).abs().max() < 1e-4
    changed = [i for i in range(1, len(conditions) - 2) if (expected[i, -1] - expected[0, -1]).abs().max() > 1e-3]
    assert changed == list(range(1, len(conditions) - 2)), "every prefill condition must change the logits"


@pytest.mark.parametrize("variant", FAMILIES)
def test_last_token_knockouts_share_all_but_one_position(variant, synthetic, make_inputs):
    model, _, adapter, inputs = _setup(synthetic, make_inputs, variant)
    ids, pixels, extra = split_inputs(adapter, inputs)
    length = ids.shape[1]
    image = adapter.image_positions(ids)[0]
    conditions = [Knockout([length - 1], image, layers=[l]) for l in range(adapter.n_layers)]
    conditions += [Knockout([length - 1], image[i::3], layers=range(1, 3)) for i in range(3)]
    assert shared_prefix_length([as_condition(c) for c in conditions], length) == length - 1
    expected = torch.stack([reference_logits(model, adapter, ids, pixels, c, **extra)[-1:] for c in conditions])
    for engine in (
        InterventionEngine(model, adapter),
        InterventionEngine(model, adapter, max_batch_size=3),
        InterventionEngine(model, adapter, share_prefix=False, max_batch_size=1),
    ):
        got = engine.logits(engine.prepare(ids, pixels, **extra), conditions)
        assert (got - expected).abs().max() < 1e-4


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("variant", FAMILIES)
def test_batched_generation_equals_sequential_generate(variant, attn, synthetic, make_inputs):
    model, _, adapter, inputs = _setup(synthetic, make_inputs, variant, attn)
    ids, pixels, extra = split_inputs(adapter, inputs)
    conditions = _mixed_conditions(adapter, ids)
    expected = [reference_generate(model, adapter, ids, pixels, c, max_new_tokens=10, **extra) for c in conditions]
    engine = InterventionEngine(model, adapter, max_batch_size=4)
    out = engine.generate(engine.prepare(ids, pixels, **extra), conditions, max_new_tokens=10)
    assert out.tokens == expected
    assert out.tokens[-1] != out.tokens[0], "blocking the image from generated tokens must matter"
    assert out.prefix_length > 0


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("variant", FAMILIES)
def test_blocked_attention_probabilities_are_exactly_zero(variant, attn, synthetic, make_inputs):
    model, _, adapter, inputs = _setup(synthetic, make_inputs, variant, attn)
    length = inputs["input_ids"].shape[1]
    image = adapter.image_positions(inputs["input_ids"])[0]
    queries = [length - 2, length - 1]
    blocked = image[::3]
    ko = Knockout(queries, blocked, layers=[1, 2], heads=[0, 3])
    read = Capture([f"attn.{l}" for l in range(adapter.n_layers)], queries)
    with knockout(adapter, ko), read.reading(adapter), torch.no_grad():
        model(**inputs)
    for layer in range(adapter.n_layers):
        slots, probs = read.record.positions(f"attn.{layer}"), read.record[f"attn.{layer}"].transpose(0, 1)[None]
        assert slots.tolist() == queries and probs.shape == (1, adapter.n_heads, 2, length)
        on_blocked = probs[0][:, :, blocked]
        if layer in (1, 2):
            assert (on_blocked[[0, 3]] == 0).all(), "blocked probabilities must be exactly zero"
            assert (on_blocked[[1, 2]] > 0).all(), "heads not named stay untouched"
        else:
            assert (on_blocked > 0).all()


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("variant", FAMILIES)
def test_blocking_every_later_position_from_the_image_makes_output_image_independent(
    variant, attn, synthetic, make_inputs
):
    model, _, adapter, a = _setup(synthetic, make_inputs, variant, attn, seed=1)
    b = make_inputs(synthetic(variant, attn)[1], adapter, seed=2)
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["pixel_values"], b["pixel_values"])
    image = adapter.image_positions(a["input_ids"])[0]
    after = int(image[-1]) + 1

    def logits(inputs):
        with torch.no_grad():
            return model(**inputs).logits[0, after:]

    assert (logits(a) - logits(b)).abs().max() > 1e-2
    with knockout(adapter, Knockout(From(after), image)):
        torch.testing.assert_close(logits(a), logits(b), atol=1e-5, rtol=0)
        gen_a = model.generate(**a, max_new_tokens=6, do_sample=False)
        gen_b = model.generate(**b, max_new_tokens=6, do_sample=False)
    assert torch.equal(gen_a, gen_b), "cached decode steps must be blocked from the image too"
    # the same through the engine (prefix shared up to the first post-image position)
    engine = InterventionEngine(model, adapter)
    condition = [Knockout(From(after), image)]
    prepared = [engine.prepare(x["input_ids"], **image_inputs(adapter, x)) for x in (a, b)]
    fast = [engine.logits(p, condition, positions=range(after, a["input_ids"].shape[1])) for p in prepared]
    torch.testing.assert_close(fast[0], fast[1], atol=1e-5, rtol=0)
    tokens = [engine.generate(p, condition, max_new_tokens=6, eos_token_id=-1).tokens for p in prepared]
    assert tokens[0] == tokens[1] == [gen_a[0, a["input_ids"].shape[1] :].tolist()]


def test_image_embedding_capture_matches_image_features(synthetic, make_inputs):
    for variant in FAMILIES:
        model, _, adapter, inputs = _setup(synthetic, make_inputs, variant)
        read = Capture(["image_features"], From(0))
        with read.reading(adapter), torch.no_grad():
            model(**inputs)
        with torch.no_grad():
            features = adapter.image_features(**image_inputs(adapter, inputs))
        torch.testing.assert_close(read.record["image_features"], features if features.ndim == 3 else features[None])
        assert not adapter.projector._forward_hooks


# ---- KV-cache surgery: positions continue exactly (M-RoPE: index + delta) ------------------------


def _question(processor):
    return continuation_ids(processor, " Is there a cat?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("variant", FAMILIES)
def test_cache_keeping_every_position_reproduces_the_full_context_answer(variant, synthetic, make_inputs):
    model, processor, adapter, inputs = _setup(synthetic, make_inputs, variant)
    ids, pixels, extra = split_inputs(adapter, inputs)
    question = _question(processor)
    full = reference_generate(model, adapter, torch.cat([ids, question], 1), pixels, None, max_new_tokens=8, **extra)
    cache = prefill_cache(adapter, ids, pixels, **extra)
    kept = select_cache(cache, range(ids.shape[1]))
    assert kept.rope.delta == adapter.rope_positions(ids, **image_inputs(adapter, inputs)).delta
    assert continue_generation(adapter, kept, question, max_new_tokens=8) == full
    assert continue_generation(adapter, kept, question, max_new_tokens=8) == full  # reusable


@pytest.mark.parametrize("variant", FAMILIES)
def test_per_layer_subsets_equal_blocking_the_dropped_keys(variant, synthetic, make_inputs):
    model, processor, adapter, inputs = _setup(synthetic, make_inputs, variant)
    ids, pixels, extra = split_inputs(adapter, inputs)
    length = ids.shape[1]
    image = adapter.image_positions(ids)[0].tolist()
    text = [p for p in range(length) if p not in image]
    keep = [sorted(text + image[layer * 5 : layer * 5 + 3 + layer]) for layer in range(adapter.n_layers)]
    question = _question(processor)
    dropped = [Knockout(From(length), sorted(set(range(length)) - set(k)), layers=[l]) for l, k in enumerate(keep)]
    expected = reference_generate(
        model, adapter, torch.cat([ids, question], 1), pixels, dropped, max_new_tokens=8, **extra
    )
    cache = prefill_cache(adapter, ids, pixels, **extra)
    kept = select_cache(cache, keep)
    assert continue_generation(adapter, kept, question, max_new_tokens=8) == expected
    full = continue_generation(adapter, select_cache(cache, range(length)), question, max_new_tokens=8)
    assert continue_generation(adapter, select_cache(cache, text), question, max_new_tokens=8) != full


def test_qwen2_vl_cache_surgery_needs_the_rope_delta(synthetic, make_inputs):
    """Continuing at sequence indices (delta ignored) gives different logits: the delta matters."""
    model, processor, adapter, inputs = _setup(synthetic, make_inputs, "tiny-qwen2-vl")
    ids, pixels, extra = split_inputs(adapter, inputs)
    cache = prefill_cache(adapter, ids, pixels, **extra)
    assert cache.positions.delta < 0
    question = _question(processor)
    right = select_cache(cache, range(ids.shape[1]))
    wrong = select_cache(cache, range(ids.shape[1]), positions=type(cache.positions).arange(ids.shape[1]))
    with torch.no_grad():
        logits = []
        for kept in (right, wrong):
            fresh = DynamicCache(ddp_cache_data=[(l.keys, l.values) for l in kept.cache.layers])
            span = kept.rope.span(ids.shape[1], ids.shape[1] + question.shape[1])
            hidden, _ = adapter.language_model_forward(
                adapter.embed_tokens(question), past_key_values=fresh, position_ids=span
            )
            logits.append(adapter.unembed(hidden[:, -1]))
        full = reference_logits(model, adapter, torch.cat([ids, question], 1), pixels, None, **extra)[-1]
    torch.testing.assert_close(logits[0][0], full, atol=1e-4, rtol=0)
    assert (logits[1][0] - full).abs().max() > 1e-3
