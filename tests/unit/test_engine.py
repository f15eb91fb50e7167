"""The fast engine (batched, prefix-shared) equals the naive reference; KV-cache surgery."""
from __future__ import annotations

import logging

import pytest
import torch
from helpers import continuation_ids, mixed_conditions
from oomfixtures import out_of_memory_above

from vlminterp.batching import AdaptiveBatch, BatchOutOfMemoryError
from vlminterp.interventions import (
    From,
    InterventionEngine,
    Knockout,
    reference_generate,
    reference_logits,
)
from vlminterp.interventions.cache import continue_generation, prefill_cache, select_cache
from vlminterp.interventions.engine import ONE_PREFIX, shared_prefix_length

VARIANTS = ["tiny-llama", "tiny-gqa", "tiny-odd-grid", "tiny-phi3"]
BACKENDS = ["sdpa", "eager"]


def _setup(synthetic, make_inputs, variant, attn, seed=0):
    model, processor, adapter = synthetic(variant, attn)
    inputs = make_inputs(processor, adapter, seed=seed)
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    return model, processor, adapter, ids, pixels


def _mixed_conditions(adapter, ids) -> list:
    return mixed_conditions(adapter, ids, k=4)


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_logits_equal_the_reference(variant, attn, synthetic, make_inputs):
    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs, variant, attn)
    conditions = _mixed_conditions(adapter, ids)
    expected = torch.stack([reference_logits(model, adapter, ids, pixels, c) for c in conditions])
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels)
    fast = engine.logits(prepared, conditions, positions=None)  # every position, prefix shared
    assert fast.shape == expected.shape
    assert (fast - expected).abs().max() < 1e-4
    # the conditions really differ from the clean run (so the comparison can fail)
    assert all((expected[i, -1] - expected[0, -1]).abs().max() > 1e-3 for i in range(1, len(conditions) - 2))


@pytest.mark.parametrize("attn", BACKENDS)
def test_last_token_conditions_share_all_but_one_position(attn, synthetic, make_inputs):
    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs, "tiny-gqa", attn)
    length = ids.shape[1]
    image = adapter.image_positions(ids)[0]
    conditions = [Knockout([length - 1], image, layers=[l]) for l in range(adapter.n_layers)]
    conditions += [Knockout([length - 1], image[i::4]) for i in range(4)]
    from vlminterp.interventions import as_condition

    assert shared_prefix_length([as_condition(c) for c in conditions], length) == length - 1
    expected = torch.stack([reference_logits(model, adapter, ids, pixels, c)[-1:] for c in conditions])
    for engine in (
        InterventionEngine(model, adapter),
        InterventionEngine(model, adapter, max_batch_size=3),
        InterventionEngine(model, adapter, share_prefix=False, max_batch_size=1),
    ):
        got = engine.logits(engine.prepare(ids, pixels), conditions)
        assert (got - expected).abs().max() < 1e-4


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_generation_equals_sequential_generate(variant, attn, synthetic, make_inputs):
    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs, variant, attn)
    conditions = _mixed_conditions(adapter, ids)
    expected = [reference_generate(model, adapter, ids, pixels, c, max_new_tokens=10) for c in conditions]
    engine = InterventionEngine(model, adapter)
    out = engine.generate(engine.prepare(ids, pixels), conditions, max_new_tokens=10)
    assert out.tokens == expected
    assert out.tokens[-1] != out.tokens[0], "blocking the image from generated tokens must matter"
    assert out.prefix_length > 0


def test_generation_stops_each_row_at_its_own_eos(synthetic, make_inputs):
    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs, "tiny-llama", "sdpa")
    conditions = _mixed_conditions(adapter, ids)
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels)
    free_running = engine.generate(prepared, conditions, max_new_tokens=12, eos_token_id=-1).tokens
    eos = free_running[1][3]  # some token row 1 emits at step 3 acts as EOS
    out = engine.generate(prepared, conditions, max_new_tokens=12, eos_token_id=eos)
    expected = [reference_generate(model, adapter, ids, pixels, c, max_new_tokens=12, eos_token_id=eos) for c in conditions]
    assert out.tokens == expected
    lengths = {len(t) for t in out.tokens}
    assert len(out.tokens[1]) <= 4 and len(lengths) > 1, "rows must stop independently"
    assert all(t[-1] == eos or len(t) == 12 for t in out.tokens)


def test_engine_rejects_a_batch_of_inputs(synthetic, make_inputs):
    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs, "tiny-llama", "sdpa")
    with pytest.raises(ValueError, match="ONE input"):
        InterventionEngine(model, adapter).prepare(torch.cat([ids, ids]), torch.cat([pixels, pixels]))


# ---- CUDA out-of-memory: halve the batch, same results, recorded ------------------------------------
def test_out_of_memory_halves_the_batch_and_keeps_the_results(synthetic, make_inputs, caplog):
    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs, "tiny-gqa", "sdpa")
    conditions = _mixed_conditions(adapter, ids)  # 11 conditions, every one in the suffix batch
    one_batch = {"max_batch_size": 16, "batching": ONE_PREFIX}  # one group, as the experiments run
    clean = InterventionEngine(model, adapter, **one_batch)
    prepared = clean.prepare(ids, pixels)
    expected_logits = clean.logits(prepared, conditions, positions=None)
    expected_tokens = clean.generate(prepared, conditions, max_new_tokens=6).tokens
    assert clean.batches.columns() == {"batch_size": 16, "oom_retries": 0}

    engine = InterventionEngine(model, adapter, **one_batch, stage="test stage")
    with caplog.at_level(logging.WARNING, logger="vlminterp.batching"), \
            out_of_memory_above(adapter.language_model, 3) as oom:
        logits = engine.logits(engine.prepare(ids, pixels), conditions, positions=None)
        mark = engine.batches.retries
        tokens = engine.generate(engine.prepare(ids, pixels), conditions, max_new_tokens=6).tokens
    assert oom.raised > 0 and oom.largest_run <= 3
    assert torch.allclose(logits, expected_logits, atol=1e-5, rtol=0) and tokens == expected_tokens
    # 11 conditions -> 5 -> 2: two retries in logits; generate starts at 2 and needs none
    assert len(conditions) == 11 and engine.max_batch_size == 2 <= 3 and engine.batches.retries == 2
    assert engine.batches.columns(since=mark) == {"batch_size": 2, "oom_retries": 0}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "test stage" in warnings[0].getMessage()
    assert "batch size 11" in warnings[0].getMessage() and "batch size 5" in warnings[0].getMessage()


def test_out_of_memory_at_batch_one_names_the_stage(synthetic, make_inputs):
    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs, "tiny-llama", "sdpa")
    engine = InterventionEngine(model, adapter, max_batch_size=8, stage="K2 group knockouts")
    prepared = engine.prepare(ids, pixels)
    conditions = [Knockout(From(0), [1]), Knockout(From(0), [2]), None]  # no shared prefix: 3 rows
    with out_of_memory_above(adapter.language_model, 0), \
            pytest.raises(BatchOutOfMemoryError, match=r"K2 group knockouts.*batch size 1.*configured batch size 8"):
        engine.logits(prepared, conditions)
    assert engine.batches.retries == 1  # 3 rows -> 1 -> error
    # a shared prefix runs at batch size 1 anyway: out of memory there is the same clear error at once
    with out_of_memory_above(adapter.language_model, 0), pytest.raises(BatchOutOfMemoryError, match="prefix"):
        engine.logits(prepared, [Knockout([ids.shape[1] - 1], [1])])


def test_adaptive_batch_redoes_only_the_failed_chunk():
    calls = []

    def work(chunk):
        calls.append(list(chunk))
        if len(chunk) > 2:
            raise torch.OutOfMemoryError("injected")
        return [x * 10 for x in chunk]

    batches = AdaptiveBatch(4, stage="unit")
    assert [y for part in batches.map(range(7), work) for y in part] == [x * 10 for x in range(7)]
    assert calls == [[0, 1, 2, 3], [0, 1], [2, 3], [4, 5], [6]]
    assert batches.columns() == {"batch_size": 2, "oom_retries": 1}
    with pytest.raises(ValueError):
        AdaptiveBatch(0)


# ---- KV-cache surgery ---------------------------------------------------------------------------


def _question(processor):
    return continuation_ids(processor, " Is there a cat? ASSISTANT:")


@pytest.mark.parametrize("variant", ["tiny-llama", "tiny-gqa", "tiny-phi3"])
def test_cache_keeping_every_position_reproduces_the_full_context_answer(variant, synthetic, make_inputs):
    model, processor, adapter, ids, pixels = _setup(synthetic, make_inputs, variant, "sdpa")
    question = _question(processor)
    full = reference_generate(model, adapter, torch.cat([ids, question], 1), pixels, None, max_new_tokens=8)
    cache = prefill_cache(adapter, ids, pixels)
    kept = select_cache(cache, range(ids.shape[1]))
    assert continue_generation(adapter, kept, question, max_new_tokens=8) == full
    assert continue_generation(adapter, kept, question, max_new_tokens=8) == full  # reusable


@pytest.mark.parametrize("variant", ["tiny-llama", "tiny-gqa"])
def test_per_layer_subsets_equal_blocking_the_dropped_keys(variant, synthetic, make_inputs):
    """Dropping keys per layer == keeping them and blocking every new query from them; this also
    pins the positions: kept keys keep their original RoPE positions, new tokens continue after T."""
    model, processor, adapter, ids, pixels = _setup(synthetic, make_inputs, variant, "sdpa")
    length = ids.shape[1]
    image = adapter.image_positions(ids)[0].tolist()
    text = [p for p in range(length) if p not in image]
    keep = [sorted(text + image[layer * 3 : layer * 3 + 2 + layer]) for layer in range(adapter.n_layers)]
    question = _question(processor)
    dropped = [Knockout(From(length), sorted(set(range(length)) - set(k)), layers=[l]) for l, k in enumerate(keep)]
    expected = reference_generate(model, adapter, torch.cat([ids, question], 1), pixels, dropped, max_new_tokens=8)
    cache = prefill_cache(adapter, ids, pixels)
    before = [layer.keys.clone() for layer in cache.layers]
    kept = select_cache(cache, keep)
    assert [len(k) for k in kept.kept_positions] == [len(k) for k in keep]
    assert continue_generation(adapter, kept, question, max_new_tokens=8) == expected
    assert all(torch.equal(b, layer.keys) for b, layer in zip(before, cache.layers)), "source cache untouched"
    # and a different subset gives a different answer (the comparison can fail)
    prompt_only = select_cache(cache, text)
    full = continue_generation(adapter, select_cache(cache, range(length)), question, max_new_tokens=8)
    assert continue_generation(adapter, prompt_only, question, max_new_tokens=8) != full


@pytest.mark.parametrize("variant", ["tiny-llama", "tiny-phi3"])
def test_engine_continues_kept_caches_in_batches_as_the_reference_answers(variant, synthetic, make_inputs):
    """`continue_cache` (what K4 runs): questions of two lengths after two kept caches, two rows per
    batch, each answer equal to the naive reference on the whole input with the dropped keys blocked."""
    model, processor, adapter, ids, pixels = _setup(synthetic, make_inputs, variant, "sdpa")
    engine = InterventionEngine(model, adapter, max_batch_size=2)
    length = ids.shape[1]
    text = [p for p in range(length) if p not in adapter.image_positions(ids)[0].tolist()]
    questions = [continuation_ids(processor, q) for q in
                 (" Is there a cat? ASSISTANT:", " Is there a dog? ASSISTANT:", " What is it? ASSISTANT:",
                  " Is there a red square here? ASSISTANT:")]
    assert len({q.shape[1] for q in questions}) > 1, "two lengths: two batches"
    kept = engine.kept_caches(engine.prepare(ids, pixels), {"all": range(length), "text": text})
    for key, dropped in (("all", []), ("text", sorted(set(range(length)) - set(text)))):
        blocked = [Knockout(From(length), dropped)] if dropped else None
        expected = [reference_generate(model, adapter, torch.cat([ids, q], 1), pixels, blocked, max_new_tokens=6)
                    for q in questions]
        assert engine.continue_cache(kept[key], questions, max_new_tokens=6) == expected, key


@pytest.mark.parametrize("variant", ["tiny-llama", "tiny-qwen2-vl"])
def test_extend_equals_preparing_the_longer_input(variant, synthetic, make_inputs):
    """`engine.extend` (K4's full_image input) gives the embeddings and RoPE positions of preparing
    prompt + text at once (Qwen2-VL: M-RoPE positions continue after the image)."""
    from helpers import split_inputs

    model, processor, adapter = synthetic(variant)
    ids, pixels, extra = split_inputs(adapter, make_inputs(processor, adapter))
    engine = InterventionEngine(model, adapter)
    question = continuation_ids(processor, " Is there a cat? ASSISTANT:")
    extended = engine.extend(engine.prepare(ids, pixels, **extra), question)
    whole = engine.prepare(torch.cat([ids, question], 1), pixels, **extra)
    assert torch.equal(extended.input_ids, whole.input_ids)
    torch.testing.assert_close(extended.inputs_embeds, whole.inputs_embeds)
    assert torch.equal(extended.rope.span(0, whole.length + 3), whole.rope.span(0, whole.length + 3))


def test_conditions_do_not_copy_the_shared_prefix(synthetic, make_inputs):
    """Each extra condition costs its own positions' KV and activations, never a copy of the prefix's
    KV cache (the engine used to copy it into every row: >= 1x the prefix KV per condition)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.memory_prefix import ConditionsPhase, kv_bytes_per_position, peak_bytes

    model, _, adapter, ids, pixels = _setup(synthetic, make_inputs, "tiny-llama", "sdpa")
    length = ids.shape[1]
    image = adapter.image_positions(ids)[0]
    conditions = [Knockout([length - 1], image[i:], layers=[i % adapter.n_layers]) for i in range(16)]
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels)
    phase = ConditionsPhase(engine, "cpu")
    with torch.no_grad():
        engine.logits(prepared, conditions)  # warm-up
        one = peak_bytes(lambda: engine.logits(prepared, conditions[:1]), phase)["conditions_phase"]
        many = peak_bytes(lambda: engine.logits(prepared, conditions), phase)["conditions_phase"]
    per_condition = (many - one) / (len(conditions) - 1)
    prefix_kv = (length - 1) * kv_bytes_per_position(adapter, torch.float32)
    assert 0 < per_condition < 0.25 * prefix_kv, (per_condition, prefix_kv)


def _eager_attention(query, prefix, keys, values, allowed, scaling):
    """Independent reference: the prefix copied in front of every row's keys, float64 softmax."""
    batch, heads = query.shape[:2]
    full_keys, full_values = (
        torch.cat([shared.expand(batch, -1, -1, -1), own], dim=2) for shared, own in zip(prefix, (keys, values))
    )
    repeat = heads // keys.shape[1]
    full_keys, full_values = (x.repeat_interleave(repeat, dim=1).double() for x in (full_keys, full_values))
    scores = (query.double() @ full_keys.transpose(2, 3)) * scaling
    probabilities = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return (probabilities @ full_values).transpose(1, 2)  # (B, Q, H, head_dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", ["per row", "per row and head", "shared"])
@pytest.mark.parametrize("num_queries", [1, 3])
def test_shared_prefix_attention_in_chunks_equals_eager_attention(dtype, mask, num_queries):
    """`LayerKeys.attend` (prefix read in place; in chunks of heads, of heads and rows) equals attention
    over per-row copies of the prefix; chunks of heads alone give the bits of one chunk."""
    from vlminterp.interventions.attention import LayerKeys

    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, prefix_length, own, head_dim = 5, 6, 2, 7, num_queries + 1, 8

    def random(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    query = random(batch, heads, num_queries, head_dim)
    prefix = (random(1, kv_heads, prefix_length, head_dim), random(1, kv_heads, prefix_length, head_dim))
    keys, values = random(batch, kv_heads, own, head_dim), random(batch, kv_heads, own, head_dim)
    length = prefix_length + own
    shape = {"per row": (batch, 1), "per row and head": (batch, heads), "shared": (1, 1)}[mask]
    allowed = torch.rand(*shape, num_queries, length, generator=generator) > 0.4
    allowed[..., -1] = True  # every query keeps a key
    expected = _eager_attention(query, prefix, keys, values, allowed, 0.35)
    layer = LayerKeys(keys, values, prefix)
    module = torch.nn.Module().eval()
    one_head = batch * layer.workspace_bytes_per_row(heads // kv_heads, num_queries, dtype, "cpu")
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same matmul gives the same bits
    try:
        outputs = {budget: layer.attend(module, query, allowed, 0.35, 0.0, budget)[0]
                   for budget in (None, one_head, one_head / 2, 1)}  # one chunk, per head, + rows, 1 row
    finally:
        torch.set_num_threads(threads)
    for budget, output in outputs.items():
        assert output.shape == expected.shape and output.dtype == dtype
        assert (output.double() - expected).abs().max() < tolerance, budget
    assert torch.equal(outputs[one_head], outputs[None])
