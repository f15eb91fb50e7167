"""Interventions: knockout masks, embedding replacement, capture, clean-up, streaming mean."""
from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from vlminterp.interventions import (
    Ablation,
    From,
    Knockout,
    StreamingMean,
    Capture,
    knockout,
    replace_embeddings,
)
from vlminterp.interventions.attention import AttentionPatchError, use_attention_function
from vlminterp.interventions.reference import reference_interventions

BACKENDS = ["sdpa", "eager"]


def _logits(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def _first_after_image(adapter, input_ids) -> int:
    return int(adapter.image_positions(input_ids)[0][-1]) + 1


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("variant", ["tiny-llama", "tiny-gqa"])
def test_knockout_that_blocks_nothing_changes_nothing(variant, attn, synthetic, make_inputs):
    model, processor, adapter = synthetic(variant, attn)
    inputs = make_inputs(processor, adapter)
    base = _logits(model, inputs)
    noops = [
        Knockout([3], [10, 11]),  # keys after the query are already causally masked
        Knockout([], [0, 1]),
        Knockout([5], [0], layers=[]),
    ]
    for noop in noops:
        with knockout(adapter, noop):
            torch.testing.assert_close(_logits(model, inputs), base, atol=1e-6, rtol=0)


@pytest.mark.parametrize("attn", BACKENDS)
def test_blocked_attention_probabilities_are_exactly_zero(attn, synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-gqa", attn)
    inputs = make_inputs(processor, adapter)
    length = inputs["input_ids"].shape[1]
    image = adapter.image_positions(inputs["input_ids"])[0]
    queries = [length - 2, length - 1]
    blocked_keys = image[::2]
    ko = Knockout(queries, blocked_keys, layers=[1, 2], heads=[0, 3])
    read = Capture([f"attn.{l}" for l in range(adapter.n_layers)], queries)
    with knockout(adapter, ko), read.reading(adapter):
        _logits(model, inputs)
    for layer in range(adapter.n_layers):
        slots, probs = read.record.positions(f"attn.{layer}"), read.record[f"attn.{layer}"].transpose(0, 1)[None]
        assert slots.tolist() == queries
        assert probs.shape == (1, adapter.n_heads, 2, length)
        torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
        on_blocked = probs[0][:, :, blocked_keys]
        if layer in (1, 2):
            assert (on_blocked[[0, 3]] == 0).all(), "blocked probabilities must be exactly zero"
            assert (on_blocked[[1, 2]] > 0).all(), "heads not named stay untouched"
        else:
            assert (on_blocked > 0).all()


def test_captured_attention_is_what_the_eager_model_used(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-gqa", "eager")
    inputs = make_inputs(processor, adapter)
    length = inputs["input_ids"].shape[1]
    image = adapter.image_positions(inputs["input_ids"])[0]
    read = Capture([f"attn.{l}" for l in range(adapter.n_layers)], [length - 1])
    with knockout(adapter, Knockout([length - 1], image[:5])), read.reading(adapter):
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    for layer in range(adapter.n_layers):
        torch.testing.assert_close(read.record[f"attn.{layer}"][0], out.attentions[layer][0, :, -1], atol=1e-6, rtol=0)


def test_sdpa_and_eager_capture_the_same_attention(synthetic, make_inputs):
    results = {}
    for backend in BACKENDS:
        model, processor, adapter = synthetic("tiny-llama", backend)
        inputs = make_inputs(processor, adapter)
        read = Capture(["attn.0", "attn.3"], From(20))
        with read.reading(adapter):
            _logits(model, inputs)
        results[backend] = read.record["attn.3"]
    assert results["sdpa"].shape[1] == adapter.n_heads  # (queries, heads, keys)
    torch.testing.assert_close(results["sdpa"], results["eager"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("attn", BACKENDS)
@pytest.mark.parametrize("variant", ["tiny-llama", "tiny-phi3"])
def test_blocking_all_later_positions_from_the_image_makes_output_image_independent(
    variant, attn, synthetic, make_inputs
):
    model, processor, adapter = synthetic(variant, attn)
    a = make_inputs(processor, adapter, seed=1)
    b = make_inputs(processor, adapter, seed=2)
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["pixel_values"], b["pixel_values"])
    after = _first_after_image(adapter, a["input_ids"])
    image = adapter.image_positions(a["input_ids"])[0]
    assert (_logits(model, a)[0, after:] - _logits(model, b)[0, after:]).abs().max() > 1e-2
    with knockout(adapter, Knockout(From(after), image)):
        logits_a, logits_b = _logits(model, a)[0, after:], _logits(model, b)[0, after:]
        gen_a = model.generate(**a, max_new_tokens=6, do_sample=False)
        gen_b = model.generate(**b, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(logits_a, logits_b, atol=1e-5, rtol=0)
    assert torch.equal(gen_a, gen_b), "cached decode steps must be blocked from the image too"


def test_a_fully_blocked_row_keeps_its_own_position(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-llama")
    inputs = make_inputs(processor, adapter)
    length = inputs["input_ids"].shape[1]
    every_key = range(length)
    read = Capture(["attn.0"], [length - 1])
    with knockout(adapter, Knockout([length - 1], every_key)), read.reading(adapter):
        logits = _logits(model, inputs)
    assert torch.isfinite(logits).all()
    probs = read.record["attn.0"][0]  # (heads, keys)
    assert (probs[:, -1] == 1).all() and (probs[:, :-1] == 0).all()


def test_knockout_handles_left_padding_per_row(synthetic, random_image):
    model, processor, adapter = synthetic("tiny-gqa")
    processor.tokenizer.padding_side = "left"
    prompts = [adapter.format_prompt("Hi."), adapter.format_prompt("Is there a cat in this image?")]
    images = [random_image(3), random_image(4)]
    batch = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    rows = []
    singles = []
    for row, (prompt, image) in enumerate(zip(prompts, images)):
        single = processor(images=image, text=prompt, return_tensors="pt")
        image_positions = adapter.image_positions(single["input_ids"])[0]
        singles.append((single, Knockout([single["input_ids"].shape[1] - 1], image_positions[1::3], layers=[1, 3])))
        offset = batch["input_ids"].shape[1] - single["input_ids"].shape[1]
        rows.append([Knockout([batch["input_ids"].shape[1] - 1], image_positions[1::3] + offset, layers=[1, 3])])
    with knockout(adapter, rows):
        batched = _logits(model, dict(batch))[:, -1]
    for row, (single, ko) in enumerate(singles):
        with knockout(adapter, ko):
            alone = _logits(model, {"input_ids": single["input_ids"], "pixel_values": single["pixel_values"]})
        torch.testing.assert_close(batched[row], alone[0, -1], atol=1e-4, rtol=0)


def test_knockout_rows_must_match_the_batch(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-llama")
    inputs = make_inputs(processor, adapter)
    with pytest.raises(ValueError, match="rows"):
        with knockout(adapter, [[Knockout([5], [1])], [Knockout([5], [2])]]):
            _logits(model, inputs)


def test_ablation_changes_only_the_intended_inputs(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-odd-grid")
    inputs = make_inputs(processor, adapter)
    image = adapter.image_positions(inputs["input_ids"])[0]
    doubled = {k: torch.cat([v, v]) for k, v in inputs.items()}
    vector = torch.randn(adapter.hidden_size)
    row_positions = [image[[0, 6, 12]], image[-4:]]
    def per_row():  # one Capture per batch row
        return [[Capture(["resid_pre.0"], From(0))] for _ in range(2)]

    clean = per_row()
    with Capture.batched(adapter, clean):
        _logits(model, doubled)
    ablated = per_row()
    with replace_embeddings(adapter, [[Ablation(row_positions[0], vector)], [Ablation(row_positions[1])]]):
        with Capture.batched(adapter, ablated):
            _logits(model, doubled)
    before, after = (torch.stack([row[0].record["resid_pre.0"] for row in rows]) for rows in (clean, ablated))
    for row, positions in enumerate(row_positions):
        changed = (before[row] != after[row]).any(-1)
        assert changed.nonzero().flatten().tolist() == positions.tolist()
    torch.testing.assert_close(after[0, row_positions[0]], vector.expand(3, -1))
    assert (after[1, row_positions[1]] == 0).all()


def test_ablation_applies_to_the_prefill_of_generate_only(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-llama")
    inputs = make_inputs(processor, adapter)
    image = adapter.image_positions(inputs["input_ids"])[0]
    with replace_embeddings(adapter, Ablation(image)):
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        prefill = _logits(model, inputs)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5
    assert generated[0, inputs["input_ids"].shape[1]] == prefill[0, -1].argmax()


def test_residual_capture_matches_hidden_states_and_is_not_normed_twice(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-phi3")
    inputs = make_inputs(processor, adapter)
    image = adapter.image_positions(inputs["input_ids"])[0]
    read = Capture(["resid_pre.0", *(f"resid_post.{l}" for l in range(adapter.n_layers))], image)
    with read.reading(adapter), torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    hidden = out.hidden_states  # embeddings, layer 0 .. L-2 outputs, then the FINAL-NORMED last layer
    torch.testing.assert_close(read.record["resid_pre.0"], hidden[0][0, image])
    for layer in range(adapter.n_layers - 1):
        torch.testing.assert_close(read.record[f"resid_post.{layer}"], hidden[layer + 1][0, image])
    with torch.no_grad():
        last = read.record[f"resid_post.{adapter.n_layers - 1}"]
        torch.testing.assert_close(adapter.final_norm(last), hidden[-1][0, image])
    assert last.shape == (len(image), adapter.hidden_size)


def test_residual_capture_across_cached_decoding(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-llama")
    inputs = make_inputs(processor, adapter)
    length = inputs["input_ids"].shape[1]
    resid = Capture(["resid_post.2"], From(length - 1))
    with resid.reading(adapter):
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert resid.record["resid_post.2"].shape[0] == 4  # last prompt token + 3 fed-back generated tokens
    full = Capture(["resid_post.2"], range(length - 1, length + 3))
    with full.reading(adapter):
        _logits(model, {"input_ids": generated[:, :-1], "pixel_values": inputs["pixel_values"]})
    torch.testing.assert_close(resid.record["resid_post.2"], full.record["resid_post.2"], atol=1e-5, rtol=0)


def test_image_embedding_capture(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-odd-grid")
    inputs = make_inputs(processor, adapter)
    read = Capture(["image_features"], From(0))
    with read.reading(adapter):
        _logits(model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(read.record["image_features"], adapter.image_features(inputs["pixel_values"]))
    assert not adapter.projector._forward_hooks


def test_everything_is_removed_after_the_context_even_on_error(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-llama")
    inputs = make_inputs(processor, adapter)
    config = adapter.text_config
    vision_before = model.config.vision_config._attn_implementation
    attention_keys, mask_keys = set(AttentionInterface._global_mapping), set(AttentionMaskInterface._global_mapping)
    with pytest.raises(RuntimeError, match="boom"):
        with knockout(adapter, Knockout([5], [1])), Capture(["attn.0"], [5]).reading(adapter):
            with replace_embeddings(adapter, Ablation([1])), Capture(["resid_post.1"], From(0)).reading(adapter):
                assert config._attn_implementation.startswith("vlminterp")
                assert model.config.vision_config._attn_implementation == vision_before  # vision untouched
                _logits(model, inputs)
                raise RuntimeError("boom")
    assert config._attn_implementation == "sdpa"
    assert set(AttentionInterface._global_mapping) == attention_keys
    assert set(AttentionMaskInterface._global_mapping) == mask_keys
    assert not hasattr(adapter.language_model, "_vlminterp_attention_editor")
    assert not adapter.language_model._forward_pre_hooks
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in adapter.decoder_layers)
    with pytest.raises(RuntimeError, match="boom"):
        with reference_interventions(adapter, Knockout([5], [1])):
            raise RuntimeError("boom")
    assert config._attn_implementation == "sdpa"
    assert set(AttentionInterface._global_mapping) == attention_keys


def test_patching_an_unsupported_backend_or_twice_is_an_explicit_error(synthetic):
    _, _, adapter = synthetic("tiny-llama")
    with use_attention_function(adapter, lambda *a, **k: None):
        with pytest.raises(AttentionPatchError, match="attn_implementation"):
            with knockout(adapter, Knockout([5], [1])):
                pass
    assert adapter.text_config._attn_implementation == "sdpa"


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_streaming_mean_equals_the_mean_of_the_concatenation(chunk):
    data = torch.randn(5, 50, 16, dtype=torch.float32) * 3 + 1
    running = StreamingMean()
    flat = data.reshape(-1, 16)
    for start in range(0, flat.shape[0], chunk):
        running.update(flat[start : start + chunk])
    expected = torch.mean(flat.double(), dim=0)
    torch.testing.assert_close(running.mean(), expected, atol=1e-12, rtol=0)
    assert running.count == 250
    restored = StreamingMean.from_state_dict(running.state_dict())
    torch.testing.assert_close(restored.mean(torch.float32), expected.float())


def test_streaming_mean_rejects_misuse():
    running = StreamingMean()
    with pytest.raises(ValueError, match="before any update"):
        running.mean()
    running.update(torch.ones(2, 4))
    with pytest.raises(ValueError, match="size"):
        running.update(torch.ones(2, 5))
