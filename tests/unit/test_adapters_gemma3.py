"""Gemma 3 (tiny random weights from the real config, the real processor, a real COCO image): the
image tokens and cells against the processor's own outputs, the token_type_ids trap, and every engine
operation either equal to the naive reference / the HF model's own logits or refused by name."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image
from shared_fixtures import COCO_MINI, GEMMA3_PROCESSOR, require

from vlminterp.interventions import Ablation, Capture, From, InterventionEngine, Knockout, reference_generate, reference_logits
from vlminterp.models.adapters import Gemma3Adapter, adapter_for
from vlminterp.models.adapters.gemma3 import ImageBlockError
from vlminterp.testing.tiny_gemma3 import build_tiny_gemma3

IMAGE = "val2017/000000000139.jpg"


@lru_cache(maxsize=None)
def _processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(GEMMA3_PROCESSOR))


@lru_cache(maxsize=None)
def _setup(attn: str = "sdpa"):
    model, processor = build_tiny_gemma3(GEMMA3_PROCESSOR, attn_implementation=attn, processor=_processor())
    adapter = adapter_for(model, processor)
    image = Image.open(COCO_MINI / IMAGE).convert("RGB")
    encoding = processor(text=adapter.format_prompt("What is in this image?"), images=image, return_tensors="pt")
    return model, adapter, encoding, image.size


@pytest.fixture(scope="module")
def gemma():
    require(GEMMA3_PROCESSOR), require(COCO_MINI / IMAGE)
    torch.manual_seed(0)
    return _setup


def _checked_positions(adapter, ids) -> list[int]:
    """Logits compared here (the full 262k vocabulary at every position would dominate the run time):
    image tokens (their block is bidirectional), the text after the image, the last position."""
    (image,) = adapter.image_positions(ids)
    return [int(image[0]), int(image[60]), int(image[-1]), int(image[-1]) + 3, ids.shape[1] - 1]


def _conditions(adapter, ids):
    length = ids.shape[1]
    (image,) = adapter.image_positions(ids)
    mean = torch.randn(adapter.hidden_size, generator=torch.Generator().manual_seed(1))
    return [
        None,
        Ablation(image[40:60], mean),                         # inside the image block
        Ablation(image),                                      # the whole image, zeros
        Knockout([length - 1], image, layers=[1]),            # a global layer
        Knockout(range(int(image[-1]) + 1, length), image[::3], layers=[0, 2], heads=[1]),  # sliding layers
        Knockout(image[:64], image[128:]),                    # image -> later image: only the block allows it
    ]


def test_registry_geometry_and_image_tokens_match_the_processor(gemma):
    model, adapter, encoding, size = gemma()
    assert isinstance(adapter, Gemma3Adapter)
    ids, tokenizer = encoding["input_ids"], _processor().tokenizer
    # independent: the processor's own token_type_ids, its image_seq_length, the tokenizer's marker ids
    from_processor = torch.nonzero(encoding["token_type_ids"][0]).flatten()
    (positions,) = adapter.image_positions(ids)
    assert positions.tolist() == from_processor.tolist()
    assert len(positions) == _processor().image_seq_length == 256
    start, end = tokenizer.convert_tokens_to_ids(["<start_of_image>", "<end_of_image>"])
    assert int(ids[0, positions[0] - 1]) == start and int(ids[0, positions[-1] + 1]) == end
    assert positions.tolist() == list(range(int(positions[0]), int(positions[0]) + 256))
    groups = adapter.token_groups(ids)  # Kaduri's groups: BOS + turn tag + <start_of_image> | image | the rest
    assert groups.bos == (0,) and groups.system[-1] == int(positions[0]) - 1
    assert groups.image == tuple(positions.tolist()) and groups.query[0] == int(positions[-1]) + 1
    width, height = size
    boxes = adapter.cell_boxes(size).astype(float)
    k = torch.arange(256)
    rows, cols = (k // 16).numpy(), (k % 16).numpy()  # 896 px squashed to 16 x 16 cells of 56 px
    expected = np.stack([cols * width / 16, rows * height / 16, (cols + 1) * width / 16, (rows + 1) * height / 16], 1)
    np.testing.assert_allclose(boxes, expected, atol=1e-6)


def test_projector_is_redrawn_so_ablations_are_not_vacuous(gemma):
    model, adapter, encoding, _ = gemma()
    assert model.model.multi_modal_projector.mm_input_projection_weight.abs().min() > 0
    ids, pixels = encoding["input_ids"], encoding["pixel_values"]
    clean, ablated = (reference_logits(model, adapter, ids, pixels, c)[-1] for c in (None, Ablation(adapter.image_positions(ids)[0])))
    assert (clean - ablated).abs().max() > 1e-3


def test_token_type_ids_trap_and_adapter_inputs(gemma):
    model, adapter, encoding, _ = gemma()
    ids, pixels = encoding["input_ids"], encoding["pixel_values"]
    with torch.no_grad():
        own = model(**encoding).logits[0]
        silent = model(input_ids=ids, pixel_values=pixels).logits[0]
    assert (own - silent).abs().max() > 1e-3, "without token_type_ids transformers drops the image block"
    inputs = adapter.model_inputs(ids, pixel_values=pixels)
    assert torch.equal(inputs["token_type_ids"], encoding["token_type_ids"])
    assert torch.equal(reference_logits(model, adapter, ids, pixels), own)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_engine_logits_equal_the_model_and_the_reference(gemma, attn):
    model, adapter, encoding, _ = gemma(attn)
    ids, pixels = encoding["input_ids"], encoding["pixel_values"]
    conditions = _conditions(adapter, ids)
    if attn == "eager":  # the eager vision tower is slow at 4096 patches: the clean run and two knockouts
        conditions = [conditions[0], conditions[3], conditions[-1]]
    checked = _checked_positions(adapter, ids)
    expected = torch.stack([reference_logits(model, adapter, ids, pixels, c)[checked] for c in conditions])
    # expected[0] is the HF model's own logits (test_token_type_ids_trap_and_adapter_inputs)
    engine = InterventionEngine(model, adapter)
    fast = engine.logits(engine.prepare(ids, pixels), conditions, positions=checked)
    assert (fast - expected).abs().max() < 1e-4
    assert (expected[-1] - expected[0]).abs().max() > 1e-3, "the image-block knockout must change something"


def test_generation_with_knockouts_equals_the_reference(gemma):
    model, adapter, encoding, _ = gemma()
    ids, pixels = encoding["input_ids"], encoding["pixel_values"]
    (image,) = adapter.image_positions(ids)
    conditions = [None, Knockout(From(ids.shape[1] - 1), image), Knockout(From(ids.shape[1]), image[:100], layers=[1, 3])]
    engine = InterventionEngine(model, adapter)
    out = engine.generate(engine.prepare(ids, pixels), conditions, max_new_tokens=4, eos_token_id=[])
    expected = [reference_generate(model, adapter, ids, pixels, c, max_new_tokens=4, eos_token_id=[]) for c in conditions]
    assert out.tokens == expected


def test_capture_reads_the_models_own_attention(gemma):
    model, adapter, encoding, _ = gemma("eager")
    ids, pixels = encoding["input_ids"], encoding["pixel_values"]
    (image,) = adapter.image_positions(ids)
    rows = [int(image[0]), int(image[100]), ids.shape[1] - 1]
    read = Capture(["attn.1", "attn.2", "resid_post.2"], rows)
    engine = InterventionEngine(model, adapter)
    engine.logits(engine.prepare(ids, pixels), [read])
    with torch.no_grad():
        out = model(**encoding, output_attentions=True, output_hidden_states=True)
    for layer in (1, 2):  # an image query sees LATER image keys (the block), in a global and a sliding layer
        got = read.record[f"attn.{layer}"]
        want = out.attentions[layer][0][:, rows].transpose(0, 1)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-5
    assert float(read.record["attn.1"][0, :, int(image[-1])].min()) > 0
    assert (read.record["resid_post.2"] - out.hidden_states[3][0, rows]).abs().max() < 1e-4


def test_prefix_sharing_stops_at_the_image_and_a_cut_block_is_refused(gemma):
    model, adapter, encoding, _ = gemma()
    ids, pixels = encoding["input_ids"], encoding["pixel_values"]
    (image,) = adapter.image_positions(ids)
    assert adapter.shared_prefix_limit(ids, int(image[50])) == int(image[0])
    assert adapter.shared_prefix_limit(ids, int(image[-1]) + 1) == int(image[-1]) + 1
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels)
    conditions, checked = _conditions(adapter, ids)[:3], _checked_positions(adapter, ids)
    shared = engine.logits(prepared, conditions, positions=checked)
    alone = InterventionEngine(model, adapter, share_prefix=False, max_batch_size=1).logits(prepared, conditions, positions=checked)
    assert (shared - alone).abs().max() < 1e-4
    with pytest.raises(ImageBlockError, match="gemma3"), torch.no_grad():
        adapter.language_model_forward(prepared.inputs_embeds[:, : int(image[10])], use_cache=False)


def test_kept_caches_continue_as_the_full_prompt_and_as_a_knockout_of_the_dropped_keys(gemma):
    """Keeping every position = generating after prompt + question; dropping the image = blocking the
    question and answer from it (a window of 512 here: a pruned cache's slots are not positions, and
    the existing sliding-window check refuses a sequence longer than the window)."""
    model, processor = build_tiny_gemma3(GEMMA3_PROCESSOR, processor=_processor(), sliding_window=512)
    adapter = adapter_for(model, processor)
    _, _, encoding, _ = gemma()
    ids, pixels = encoding["input_ids"], encoding["pixel_values"]
    question = processor.tokenizer(" Is it a dog?", add_special_tokens=False, return_tensors="pt")["input_ids"]
    length = ids.shape[1]
    (image,) = adapter.image_positions(ids)
    engine = InterventionEngine(model, adapter)
    kept = engine.kept_caches(engine.prepare(ids, pixels),
                              {"all": list(range(length)), "text": [p for p in range(length) if p not in set(image.tolist())]})
    full = torch.cat([ids, question], 1)
    want_all = reference_generate(model, adapter, full, pixels, None, max_new_tokens=4, eos_token_id=[])
    want_text = reference_generate(model, adapter, full, pixels, Knockout(From(length), image), max_new_tokens=4,
                                   eos_token_id=[])
    assert engine.continue_cache(kept["all"], [question], max_new_tokens=4, eos_token_id=[]) == [want_all]
    assert engine.continue_cache(kept["text"], [question], max_new_tokens=4, eos_token_id=[]) == [want_text]
    assert want_all != want_text, "the image must matter to the answer for the check to mean anything"
