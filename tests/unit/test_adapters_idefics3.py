"""Idefics3 / SmolVLM (tiny random weights from SmolVLM-256M-Instruct's real config, the real processor,
real COCO images and masks): tiles, the global image and their marker tokens against the processor's
own outputs, each image token's pixels against the processor's pixels through the model's own pixel
shuffle, the all-zero-tile trap, and the engine against the naive reference."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image
from shared_fixtures import COCO_MINI, SMOLVLM_PROCESSOR, require

from vlminterp.interventions import (Ablation, Capture, From, InterventionEngine, Knockout, reference_generate,
                                     reference_logits)
from vlminterp.geometry.objects import object_tokens
from vlminterp.models.adapters import Idefics3Adapter, adapter_for
from vlminterp.testing.tiny_idefics3 import build_tiny_idefics3

IMAGE, PORTRAIT = "val2017/000000000139.jpg", "val2017/000000011813.jpg"  # 640 x 426, 333 x 500


@lru_cache(maxsize=None)
def _processor(longest_edge: int | None = None):
    """The real processor (longest_edge: its resize target instead of the checkpoint's 2048)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(SMOLVLM_PROCESSOR))
    if longest_edge is not None:
        processor.image_processor.size = {"longest_edge": longest_edge}
    return processor


@lru_cache(maxsize=None)
def _model():
    """The tiny model with the processor at 1024 px: 2 x 2 tiles + the global image for COCO images."""
    model, processor = build_tiny_idefics3(SMOLVLM_PROCESSOR, processor=_processor(1024))
    adapter = adapter_for(model, processor)
    encoding = processor(text=adapter.format_prompt("What is in this image?"), images=_image(IMAGE),
                         return_tensors="pt", return_mm_token_type_ids=True)
    return model, adapter, encoding


def _image(name: str) -> Image.Image:
    return Image.open(COCO_MINI / name).convert("RGB")


@pytest.fixture(scope="module")
def smolvlm():
    require(SMOLVLM_PROCESSOR), require(COCO_MINI / IMAGE)
    torch.manual_seed(0)
    return _model


def test_registry_module_paths_and_sites(smolvlm):
    model, adapter, _ = smolvlm()
    assert isinstance(adapter, Idefics3Adapter)
    inner = model.model
    assert adapter.language_model is inner.text_model and adapter.projector is inner.connector
    assert adapter.decoder_layers is inner.text_model.layers and adapter.lm_head is model.lm_head
    assert adapter.site("resid_post.2").module is inner.text_model.layers[2]
    assert adapter.site("image_features").module is inner.connector
    assert adapter.tile_grid == (8, 8) and adapter.tokens_per_tile == 64
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the checkpoint's bf16 is not inherited
    image = {"type": "image"}
    for system in (None, "Be brief."):  # the checkpoint's own chat template, with and without a system turn
        turns = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
        turns.append({"role": "user", "content": [image, {"type": "text", "text": "What is in this image?"}]})
        assert adapter.format_prompt("What is in this image?", system) == adapter.processor.apply_chat_template(
            turns, add_generation_prompt=True)


def test_tile_layout_matches_the_processor_for_every_coco_image(smolvlm):
    """The adapter's (cols, rows) equal the processor's `rows` / `cols` and its pixel_values' tile count
    (a landscape and a portrait image through it at 1024 px; 2048 px in the next test), and equal
    `get_number_of_image_patches` for every image size of coco-mini at 2048 and 1024 px."""
    import json

    model, adapter, _ = smolvlm()
    for name in (IMAGE, PORTRAIT):
        image = _image(name)
        out = adapter.processor.image_processor(image, return_row_col_info=True, return_tensors="np")
        cols, rows = adapter.tile_layout(image.size)
        assert (out["rows"][0][0], out["cols"][0][0]) == (rows, cols) and rows * cols > 1
        assert out["pixel_values"].shape[1] == rows * cols + 1
    sizes = {(i["width"], i["height"]) for split in ("train2017", "val2017")
             for i in json.loads((COCO_MINI / "annotations" / f"instances_{split}.json").read_text())["images"]}
    for edge in (None, 1024):
        adapter = Idefics3Adapter(model, _processor(edge))
        for width, height in sorted(sizes):
            _, rows, cols = adapter.processor.image_processor.get_number_of_image_patches(height, width)
            assert adapter.tile_layout((width, height)) == (cols, rows), (width, height, edge)


def test_without_splitting_an_image_is_the_global_image_alone(smolvlm):
    """do_image_splitting=False: one 512 px image, `<fake_token_around_image><global-img>` + 64 tokens."""
    model, adapter, _ = smolvlm()
    processor, image = adapter.processor, _image(IMAGE)
    processor.image_processor.do_image_splitting = False
    try:
        single = Idefics3Adapter(model, processor)
        ids = processor(text=single.format_prompt("What is in this image?"), images=image, return_tensors="pt")["input_ids"]
    finally:
        processor.image_processor.do_image_splitting = True
    cells = single.image_cells(image.size)
    assert cells.tile_kinds == ("thumbnail",) and cells.num_tokens == len(single.image_positions(ids)[0]) == 64
    (markers,) = single.image_markers(ids)
    assert processor.tokenizer.convert_ids_to_tokens(ids[0, markers].tolist()) == [
        "<fake_token_around_image>", "<global-img>", "<fake_token_around_image>"]


def test_image_tokens_and_markers_match_the_processors_token_layout(smolvlm):
    """At the checkpoint's own settings (4 x 3 tiles + global = 832 image tokens for a 640 x 426 image):
    each tile's 64 tokens follow `<fake_token_around_image><row_r_col_c>` with (r, c) the adapter's
    tile, the last 64 follow `<global-img>`; the markers are the processor's image span
    (mm_token_type_ids) minus its image tokens; Kaduri's groups partition the prompt, and K1 / K2
    take the whole span as the image."""
    processor = _processor()
    adapter = Idefics3Adapter(smolvlm()[0], processor)
    image = _image(IMAGE)
    encoding = processor(text=adapter.format_prompt("What is in this image?"), images=image, return_tensors="pt",
                         return_mm_token_type_ids=True)
    ids, tokenizer = encoding["input_ids"], processor.tokenizer
    (positions,) = adapter.image_positions(ids)
    cells = adapter.image_cells(image.size)
    assert len(positions) == cells.num_tokens == 832 == 64 * encoding["pixel_values"].shape[1]
    cols, rows = adapter.tile_layout(image.size)
    for tile in range(cells.num_tiles):
        first = int(positions[64 * tile])
        assert positions[64 * tile: 64 * tile + 64].tolist() == list(range(first, first + 64))
        r, c = divmod(tile, cols)
        marker = "<global-img>" if tile == rows * cols else f"<row_{r + 1}_col_{c + 1}>"
        assert tokenizer.convert_ids_to_tokens(ids[0, first - 2: first].tolist()) == ["<fake_token_around_image>", marker]
        assert cells.tile_kinds[tile] == ("thumbnail" if tile == rows * cols else "tile")
    span = torch.nonzero(encoding["mm_token_type_ids"][0]).flatten()
    (markers,) = adapter.image_markers(ids)
    assert markers.tolist() == [p for p in span.tolist() if int(ids[0, p]) != adapter.image_token_id]
    (blocks,) = adapter.image_blocks(ids)
    assert len(blocks) == 1 and torch.equal(blocks[0], positions)
    groups = adapter.token_groups(ids)
    parts = [groups.system, groups.image, groups.image_markers, groups.query]
    assert sorted(p for part in parts for p in part) == list(range(ids.shape[1]))
    assert groups.system[-1] + 1 == int(span[0]) and groups.query[0] == int(span[-1]) + 1
    assert groups.image_span == tuple(span.tolist())
    # K1's shares and K2's knockouts take the whole span as the image: the markers after the first
    # tile have read the tiles before them
    assert set(groups.labels(ids.shape[1])[list(groups.image_markers)]) == {"image"}
    from vlminterp.experiments.kaduri.knockout import KnockoutSpec, knockout_conditions

    (_, everything, *_) = knockout_conditions(groups, 2, KnockoutSpec(window_step=0, start_layer_step=0))
    assert [list(k.key_positions) for k in everything.condition.knockouts] == [span.tolist()]


def _box_means(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean of `mask` (H, W) over each [x0, y0, x1, y1) box, pixels weighted by their covered area."""
    height, width = mask.shape

    def weights(lo, hi, n):
        edges = np.arange(n)
        return np.clip(np.minimum(hi[:, None], edges + 1) - np.maximum(lo[:, None], edges), 0, 1)

    wy, wx = weights(boxes[:, 1], boxes[:, 3], height), weights(boxes[:, 0], boxes[:, 2], width)
    return ((wy @ mask) * wx).sum(1) / (wy.sum(1) * wx.sum(1))


def _processor_token_means(model, processor, mask: np.ndarray) -> np.ndarray:
    """Per image token (tiles in order, then tokens): the mean of the mask as the PROCESSOR renders it
    (the mask as a grey image, un-normalised) over the patches that the MODEL's own pixel shuffle folds
    into that token (found by shuffling patch indices through `connector.pixel_shuffle`)."""
    rendered = Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB")
    pixels = processor.image_processor(rendered, return_tensors="pt")["pixel_values"][0, :, 0].numpy()
    pixels = pixels * 0.5 + 0.5  # image_mean = image_std = 0.5 in the checkpoint's preprocessor_config
    patch = model.config.vision_config.patch_size
    side = pixels.shape[-1] // patch
    index = torch.arange(side * side, dtype=torch.float32).reshape(1, -1, 1)
    folded = model.model.connector.pixel_shuffle(index, model.config.scale_factor)[0].long().numpy()  # (64, 16)
    patches = pixels.reshape(len(pixels), side, patch, side, patch).mean(axis=(2, 4)).reshape(len(pixels), -1)
    return patches[:, folded].mean(axis=2).reshape(-1)


def test_each_tokens_pixels_are_its_box_of_the_original_image(smolvlm):
    """COCO masks (every instance of two images, a landscape and a portrait one) through the real
    processor at 1024 px: each token's share of mask pixels in the tile the processor made, over the
    patches the model folds into it, equals the mask's share of the adapter's box in the original
    image (up to the resampling's blur at mask edges; a box shifted by a quarter token is 0.25 off); a
    transposed token grid is not. The object cells of N1 / K3 are the tokens with a share > 0."""
    from pycocotools.coco import COCO

    model, adapter, _ = smolvlm()
    coco = COCO(str(COCO_MINI / "annotations" / "instances_val2017.json"))
    for name in (IMAGE, PORTRAIT):
        image_id = int(name.split("/")[1].split(".")[0])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
        mask = np.max([coco.annToMask(a) for a in anns], axis=0).astype(np.float64)
        height, width = mask.shape
        cells = adapter.image_cells((width, height))
        want = _box_means(mask, cells.boxes)
        got = _processor_token_means(model, adapter.processor, mask)
        assert got.shape == want.shape
        error = np.abs(got - want)
        assert error.mean() < 0.002 and error.max() < 0.02, (name, error.mean(), error.max())  # measured 1.5e-4, 5e-3
        transposed = np.concatenate([g.reshape(8, 8).T.reshape(-1) for g in want.reshape(-1, 64)])
        assert np.abs(got - transposed).max() > 0.5, "the check must tell a transposed grid apart"
        selected, _ = object_tokens(adapter, mask.astype(bool), "resize")  # N1 / K3's object cells
        assert np.array_equal(selected, want > 0)


def test_all_zero_tiles_keep_their_tokens(smolvlm):
    """transformers drops every all-zero tile as padding: a tile ablated to 0 (mid-grey after
    normalisation) loses its 64 features there, and its own forward refuses the prompt. The adapter
    encodes every tile: the tokens and positions stay, the tile's features are those of a zero tile.
    A black image is -1 after normalisation, so it keeps every tile even in transformers."""
    model, adapter, encoding = smolvlm()
    pixels, mask = encoding["pixel_values"].clone(), encoding["pixel_attention_mask"]
    pixels[0, 1] = 0
    with torch.no_grad():
        dropped = model.model.get_image_features(pixels, mask).pooler_output
        assert sum(len(f) for f in dropped) == 64 * (pixels.shape[1] - 1)
        with pytest.raises(Exception, match="do not match"):
            model(input_ids=encoding["input_ids"], pixel_values=pixels, pixel_attention_mask=mask)
        features = adapter.image_features(pixels, mask)
        alone = adapter.image_features(torch.zeros_like(pixels[:, :1]), mask[:, :1])
        embeds = adapter.embed(encoding["input_ids"], pixels, pixel_attention_mask=mask)
    assert features.shape[:2] == (pixels.shape[1], 64) and torch.allclose(features[1], alone[0], atol=1e-6)
    (image,) = adapter.image_positions(encoding["input_ids"])
    assert torch.allclose(embeds[0, image[64:128]], features[1], atol=1e-6)
    black = Image.new("RGB", _image(IMAGE).size)
    black_encoding = adapter.processor(text=adapter.format_prompt("What is in this image?"), images=black,
                                       return_tensors="pt")
    assert torch.equal(black_encoding["input_ids"], encoding["input_ids"])
    assert float(black_encoding["pixel_values"].max()) == -1.0
    with torch.no_grad():
        kept = model.model.get_image_features(black_encoding["pixel_values"]).pooler_output
    assert sum(len(f) for f in kept) == len(image)



def test_a_batch_of_images_leaves_out_its_padding_tiles_only(smolvlm):
    """Two images of 5 and 3 tiles as two rows: the second row's 2 padding tiles (all-zero
    pixel_attention_mask) are left out, a real tile of pixel value 0 is kept, and the features equal
    those of the two images as one row (the mean embedding's call: no padding)."""
    model, adapter, _ = smolvlm()
    images = [_image(IMAGE), _image(IMAGE).crop((0, 0, 640, 200))]  # the second: 2 x 1 tiles + global
    rows = adapter.processor.image_processor([[image] for image in images], return_tensors="pt")
    pixels, mask = rows["pixel_values"].clone(), rows["pixel_attention_mask"]
    assert pixels.shape[:2] == (2, 5) and mask[1].flatten(1).any(1).tolist() == [True] * 3 + [False] * 2
    one_row = adapter.processor.image_processor(images, return_tensors="pt")
    assert one_row["pixel_values"].shape[:2] == (1, 8)
    pixels[0, 1], flat = 0, one_row["pixel_values"].clone()
    flat[0, 1] = 0
    with torch.no_grad():
        features = adapter.image_features(pixels, mask)
        expected = adapter.image_features(flat, one_row["pixel_attention_mask"])
    assert features.shape[:2] == (8, 64) and torch.allclose(features, expected, atol=1e-5)
    with pytest.raises(ValueError, match="idefics3: a batch of several rows needs its pixel_attention_mask"):
        adapter.image_features(pixels)


def test_engine_equals_the_model_and_the_reference(smolvlm):
    """Unmodified logits equal the HF model's own; ablations (image tokens, a whole tile), knockouts
    (text -> image, text -> markers, global image -> tiles) equal the naive reference; capture equals
    the model's hidden states."""
    model, adapter, encoding = smolvlm()
    ids, pixels = encoding["input_ids"], encoding["pixel_values"]
    extra = {"pixel_attention_mask": encoding["pixel_attention_mask"]}
    length = ids.shape[1]
    (image,) = adapter.image_positions(ids)
    (markers,) = adapter.image_markers(ids)
    mean = torch.randn(adapter.hidden_size, generator=torch.Generator().manual_seed(1))
    conditions = [None, Ablation(image[70:100], mean), Ablation(image[64:128]),
                  Knockout([length - 1], image, layers=[1]),
                  Knockout(range(int(markers[-1]) + 1, length), markers, layers=[0, 2]),
                  Knockout(image[-64:], image[:-64])]
    checked = [int(image[0]), int(markers[3]), int(image[-1]), length - 1]
    expected = torch.stack([reference_logits(model, adapter, ids, pixels, c, **extra)[checked] for c in conditions])
    with torch.no_grad():
        own = model(**encoding, output_hidden_states=True)
    assert torch.equal(expected[0], own.logits[0, checked])
    engine = InterventionEngine(model, adapter)
    read = Capture(["resid_post.2"], checked)
    prepared = engine.prepare(ids, pixels, **extra)
    got = engine.logits(prepared, conditions, positions=checked)
    assert (got - expected).abs().max() < 1e-4
    engine.logits(prepared, [read])
    assert (read.record["resid_post.2"] - own.hidden_states[3][0, checked]).abs().max() < 1e-4
    for condition in range(1, len(conditions)):
        assert (expected[condition] - expected[0]).abs().max() > 1e-4, f"condition {condition} changed nothing"


def test_generation_kept_caches_and_prefix_sharing_equal_the_reference(smolvlm):
    """Greedy generation under knockouts of the image span = `model.generate`; a cache keeping every
    position continues as the full prompt + question; the shared prefix changes nothing."""
    model, adapter, encoding = smolvlm()
    ids, pixels = encoding["input_ids"], encoding["pixel_values"]
    extra = {"pixel_attention_mask": encoding["pixel_attention_mask"]}
    length = ids.shape[1]
    span = list(adapter.token_groups(ids).image_span)
    engine = InterventionEngine(model, adapter)
    prepared = engine.prepare(ids, pixels, **extra)
    conditions = [None, Knockout(From(length - 1), span), Knockout(From(length), span[: len(span) // 2], layers=[1])]
    got = engine.generate(prepared, conditions, max_new_tokens=4, eos_token_id=[]).tokens
    assert got == [reference_generate(model, adapter, ids, pixels, c, max_new_tokens=4, eos_token_id=[], **extra)
                   for c in conditions]
    question = adapter.processor.tokenizer(" Is it a tv?", add_special_tokens=False, return_tensors="pt")["input_ids"]
    kept = engine.kept_caches(prepared, {"all": list(range(length))})
    want = reference_generate(model, adapter, torch.cat([ids, question], 1), pixels, None, max_new_tokens=4,
                              eos_token_id=[], **extra)
    assert engine.continue_cache(kept["all"], [question], max_new_tokens=4, eos_token_id=[]) == [want]
    ablations = [Ablation(span[100:140]), Knockout(range(span[-1] + 1, length), span, layers=[2])]
    checked = [span[120], length - 1]
    alone = InterventionEngine(model, adapter, share_prefix=False, max_batch_size=1)
    assert (engine.logits(prepared, ablations, positions=checked)
            - alone.logits(prepared, ablations, positions=checked)).abs().max() < 1e-5


def test_kaduri_attention_and_the_mean_embedding_run_through_a_session(smolvlm):
    """The stages' own code on COCO val2017 through a Session: K1's five attention shares sum to 1 in
    every layer (the markers count as the image), and N1's mean embedding averages every real tile's
    tokens of two images."""
    from vlminterp.data.coco import CocoDataset
    from vlminterp.experiments.kaduri.attention import AttentionFractionSpec, image_attention_fractions
    from vlminterp.experiments.neo.mean_embedding import compute_mean_embedding
    from vlminterp.experiments.shared.session import DescribePrompt, Session

    model, adapter, _ = smolvlm()
    prompt = DescribePrompt(geometry="resize", description_tokens=3)
    session = Session.from_adapter(adapter, CocoDataset.load(COCO_MINI, "val2017"), prompt)
    table = image_attention_fractions(session, 139, AttentionFractionSpec(per_head=False))
    shares = {}
    for row in table:
        shares[row["layer"]] = shares.get(row["layer"], 0.0) + row["mean"]
    assert sorted(shares) == list(range(adapter.n_layers)) and np.allclose(list(shares.values()), 1.0, atol=1e-5)
    mean, count = compute_mean_embedding(session, [139, 11813])
    assert count == 2 * 5 * 64  # both 2 x 2 tiles + the global image at 1024 px
    with torch.no_grad():
        features = [session.image_features([session.dataset.load_image(i)]).flatten(0, 1) for i in (139, 11813)]
    features = torch.cat(features)
    assert torch.allclose(mean, features.mean(0), atol=1e-5)
