"""Adapters: image-token positions, cell -> pixel box geometry (checked through the real processor),
module mapping and prompt templates."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlminterp.geometry import PatchGrid
from vlminterp.models.adapters import LlavaAdapter, UnsupportedModelError, adapter_for
from vlminterp.testing.synthetic import SYNTHETIC_VARIANTS, build_processor

# ---------------------------------------------------------------------------------------------
# Geometry: paint every cell's box (as the adapter maps it) in its own colour on a non-square
# original, run the real CLIP processor, and read each patch's colour back from pixel_values.
# ---------------------------------------------------------------------------------------------


def _palette(n: int) -> np.ndarray:
    levels = math.ceil(n ** (1 / 3))
    values = np.linspace(30, 230, levels).round()
    grid = np.stack(np.meshgrid(values, values, values, indexing="ij"), -1).reshape(-1, 3)
    return grid[:n]


def _paint(size: tuple[int, int], boxes: np.ndarray, palette: np.ndarray) -> Image.Image:
    width, height = size
    image = np.zeros((height, width, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    for box, colour in zip(boxes, palette):
        if np.isnan(box).any():
            continue
        inside = (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
        image[inside] = colour
    return Image.fromarray(image)


def _patch_colours(processor, pixel_values: torch.Tensor, grid: PatchGrid, inset: int) -> np.ndarray:
    """Colour (0..255) at four points inset from each patch's corners: (cells, 4, 3)."""
    ip = processor.image_processor
    mean, std = np.array(ip.image_mean)[:, None, None], np.array(ip.image_std)[:, None, None]
    pixels = (pixel_values[0].double().numpy() * std + mean) * 255  # (3, S, S)
    p = grid.patch_size
    offsets = [(inset, inset), (inset, p - 1 - inset), (p - 1 - inset, inset), (p - 1 - inset, p - 1 - inset)]
    out = np.zeros((grid.num_cells, 4, 3))
    for k, (r, c) in enumerate(grid.cells()):
        for j, (dy, dx) in enumerate(offsets):
            out[k, j] = pixels[:, r * p + dy, c * p + dx]
    return out


def _nearest(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return np.abs(colours[..., None, :] - palette).sum(-1).argmin(-1)


GEOMETRY_CASES = [
    ("real-geometry", (500, 375)),  # landscape, COCO-like
    ("real-geometry", (360, 560)),  # portrait
    ("tiny-odd-grid", (91, 41)),  # 5x5 grid, odd sizes everywhere
    ("tiny-odd-grid", (43, 97)),
]


def _processor_resampling(variant: str, resample: str):
    """The variant's processor with `resample` ("bicubic" = its own, or "nearest") and the inset (px)
    at which patch colours are read: 2 clear of bicubic's blur, 0 (exact to the edge) for nearest."""
    processor = build_processor(SYNTHETIC_VARIANTS[variant])
    if resample == "nearest":
        processor.image_processor.resample = Image.Resampling.NEAREST
        return processor, 0
    return processor, 2


@pytest.mark.parametrize("resample", ["bicubic", "nearest"])
@pytest.mark.parametrize("variant,size", GEOMETRY_CASES)
def test_crop_geometry_boxes_match_what_the_processor_does(variant, size, resample):
    """Bicubic is what LLaVA uses (sampled 2 px inside each patch, clear of the kernel's blur);
    nearest-neighbour resampling makes the check exact to the patch edge (1-pixel offsets fail)."""
    processor, inset = _processor_resampling(variant, resample)
    adapter = _adapter_with_processor(variant, processor)
    boxes = adapter.cell_boxes(size, "crop")
    assert boxes.shape == (adapter.grid.num_cells, 4) and not np.isnan(boxes).any()
    palette = _palette(adapter.grid.num_cells)
    image = _paint(size, boxes, palette)
    pixel_values = processor.image_processor(adapter.prepare_image(image, "crop"), return_tensors="pt")["pixel_values"]
    read = _nearest(_patch_colours(processor, pixel_values, adapter.grid, inset=inset), palette)
    expected = np.arange(adapter.grid.num_cells)[:, None].repeat(4, 1)
    np.testing.assert_array_equal(read, expected)


@pytest.mark.parametrize("resample", ["bicubic", "nearest"])
@pytest.mark.parametrize("variant,size", GEOMETRY_CASES)
def test_pad_geometry_boxes_match_padding_then_resizing(variant, size, resample):
    processor, inset = _processor_resampling(variant, resample)
    adapter = _adapter_with_processor(variant, processor)
    grid = adapter.grid
    boxes = adapter.cell_boxes(size, "pad")
    cell_side = max(size) / grid.rows  # in original pixels
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    empty = np.isnan(area)
    assert empty.any(), "a non-square image must leave some cells wholly in the padding"
    palette = _palette(grid.num_cells + 1)
    cell_palette, pad_colour = palette[:-1], palette[-1]
    image = _paint(size, boxes, cell_palette)
    padded = adapter.prepare_image(image, "pad")
    # Repaint the padding in a palette colour so it can be told apart from every cell.
    padded_np = np.array(padded)
    side = max(size)
    x0, y0 = (side - size[0]) // 2, (side - size[1]) // 2
    mask = np.ones(padded_np.shape[:2], bool)
    mask[y0 : y0 + size[1], x0 : x0 + size[0]] = False
    padded_np[mask] = pad_colour
    pixel_values = processor.image_processor(Image.fromarray(padded_np), return_tensors="pt")["pixel_values"]
    read = _nearest(_patch_colours(processor, pixel_values, grid, inset=inset), palette)
    whole = ~empty & (area >= 0.999 * cell_side**2)
    assert whole.sum() >= grid.cols
    np.testing.assert_array_equal(read[whole], np.arange(grid.num_cells)[whole, None].repeat(4, 1))
    assert (read[empty] == grid.num_cells).all(), "cells mapped to no pixels must show only padding"


def test_pad_to_square_uses_the_processor_mean_colour():
    processor = build_processor(SYNTHETIC_VARIANTS["tiny-llama"])
    adapter = _adapter_with_processor("tiny-llama", processor)
    padded = adapter.prepare_image(Image.new("RGB", (30, 10), (255, 0, 0)), "pad")
    assert padded.size == (30, 30)
    mean = tuple(int(m * 255) for m in processor.image_processor.image_mean)
    assert padded.getpixel((0, 0)) == mean and padded.getpixel((15, 15)) == (255, 0, 0)


def test_unknown_geometry_is_an_error():
    grid = PatchGrid(rows=2, cols=2, patch_size=2, input_size=4, shortest_edge=4)
    with pytest.raises(ValueError, match="geometry"):
        grid.cell_boxes((8, 4), "stretch")


def _adapter_with_processor(variant: str, processor) -> LlavaAdapter:
    from vlminterp.testing.synthetic import synthetic_config

    # A meta-device model is enough: geometry reads only the config and the processor.
    with torch.device("meta"):
        meta_model = LlavaAdapter.model_class()(synthetic_config(variant))
    return LlavaAdapter(meta_model, processor)


# ---------------------------------------------------------------------------------------------
# Positions, cells, module mapping, prompts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["tiny-llama", "tiny-odd-grid", "tiny-phi3"])
def test_image_positions_and_cells(variant, synthetic, make_inputs):
    model, processor, adapter = synthetic(variant)
    inputs = make_inputs(processor, adapter)
    ids = inputs["input_ids"]
    (positions,) = adapter.image_positions(ids)
    n = adapter.grid.num_cells
    assert len(positions) == n
    assert (ids[0, positions] == model.config.image_token_id).all()
    assert (positions.diff() == 1).all(), "LLaVA places one image as a contiguous block"
    (cells,) = adapter.image_token_cells(ids)
    assert cells[0].tolist() == [0, 0] and cells[-1].tolist() == [adapter.grid.rows - 1, adapter.grid.cols - 1]
    assert adapter.grid.cell_of_token(adapter.grid.cols + 1) == (1, 1)


def test_positions_of_cells(synthetic, make_inputs):
    _, processor, adapter = synthetic("tiny-odd-grid")
    ids = make_inputs(processor, adapter)["input_ids"]
    (image,) = adapter.image_positions(ids)
    got = adapter.positions_of_cells(ids, [(1, 2), (0, 0), 24])
    assert got.tolist() == [int(image[0]), int(image[7]), int(image[24])]
    with pytest.raises(IndexError):
        adapter.positions_of_cells(ids, [(5, 0)])


def test_image_positions_per_row_of_a_padded_batch(synthetic, random_image):
    _, processor, adapter = synthetic("tiny-llama")
    processor.tokenizer.padding_side = "left"
    prompts = [adapter.format_prompt("Hi."), adapter.format_prompt("A much longer question about the image?")]
    enc = processor(images=[random_image(0), random_image(1)], text=prompts, return_tensors="pt", padding=True)
    rows = adapter.image_positions(enc["input_ids"])
    assert len(rows) == 2 and rows[0][0] > rows[1][0]  # the short prompt is left-padded further


@pytest.mark.parametrize("variant", ["tiny-gqa", "tiny-internvl", "tiny-qwen2-vl"])
def test_module_mapping(synthetic, variant):
    """Every family's adapter (ConditionalGenerationAdapter) points at the model's own modules."""
    model, _, adapter = synthetic(variant)
    assert len(adapter.decoder_layers) == adapter.n_layers == 4
    assert (adapter.n_heads, adapter.n_kv_heads) == (4, 2)
    assert adapter.lm_head is model.lm_head
    assert adapter.embed_tokens is model.get_input_embeddings()
    assert adapter.final_norm is model.model.language_model.norm
    assert adapter.text_config is model.config.text_config
    assert adapter.image_token_id == model.config.image_token_id
    projector = model.model.visual.merger if variant == "tiny-qwen2-vl" else model.model.multi_modal_projector
    assert adapter.projector is projector


def test_embed_matches_the_model_forward(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-llama")
    inputs = make_inputs(processor, adapter)
    with torch.no_grad():
        expected = model(**inputs).logits
        hidden, _ = adapter.language_model_forward(adapter.embed(**inputs), use_cache=False)
        got = adapter.unembed(hidden)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_image_features_are_post_projector(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-odd-grid")
    inputs = make_inputs(processor, adapter)
    with torch.no_grad():
        features = adapter.image_features(inputs["pixel_values"])
        embeds = adapter.embed(**inputs)
    (positions,) = adapter.image_positions(inputs["input_ids"])
    assert features.shape == (1, 25, adapter.hidden_size)
    torch.testing.assert_close(embeds[0, positions], features[0])


def test_prompt_templates(synthetic):
    _, _, llama = synthetic("tiny-llama")
    _, _, phi3 = synthetic("tiny-phi3")
    assert llama.format_prompt("describe the image") == "USER: <image>\ndescribe the image ASSISTANT:"
    system = "A chat between a curious human and an artificial intelligence assistant."
    assert llama.format_prompt("hi", system) == f"{system} USER: <image>\nhi ASSISTANT:"
    assert phi3.format_prompt("hi") == "<|user|>\n<image>\nhi<|end|>\n<|assistant|>\n"


def test_unknown_family_is_reported():
    class FakeModel:
        config = type("C", (), {"model_type": "blip"})()

    with pytest.raises(UnsupportedModelError, match="blip"):
        adapter_for(FakeModel())


@pytest.mark.parametrize("geometry", ["crop", "pad"])
def test_llava_image_cells_are_the_single_grid(geometry):
    """The per-token cell table (the contract tiled families use) reduces to the grid for LLaVA."""
    processor = build_processor(SYNTHETIC_VARIANTS["tiny-odd-grid"])
    adapter = _adapter_with_processor("tiny-odd-grid", processor)
    cells = adapter.image_cells((91, 41), geometry)
    assert cells.num_tiles == 1 and cells.tile_kinds == ("grid",) and cells.tile_shapes == ((5, 5),)
    np.testing.assert_array_equal(cells.cells()[:, 1:], adapter.grid.cells())
    assert (cells.tile == 0).all()
    np.testing.assert_array_equal(cells.boxes, adapter.grid.cell_boxes((91, 41), geometry))
    np.testing.assert_array_equal(cells.boxes, adapter.cell_boxes((91, 41), geometry))
    np.testing.assert_array_equal(cells.grid_boxes(), cells.boxes.reshape(5, 5, 4))
    assert adapter.cell_boxes((91, 41)).tolist() == adapter.cell_boxes((91, 41), "crop").tolist()  # default: crop
    with pytest.raises(ValueError, match="geometry"):
        adapter.cell_boxes((91, 41), "resize")


def test_llava_positions_of_cells_accepts_tile_triples(synthetic, make_inputs):
    _, processor, adapter = synthetic("tiny-odd-grid")
    ids = make_inputs(processor, adapter)["input_ids"]
    assert adapter.positions_of_cells(ids, [(0, 1, 2)]).tolist() == adapter.positions_of_cells(ids, [(1, 2)]).tolist()
    with pytest.raises(IndexError):
        adapter.positions_of_cells(ids, [(1, 0, 0)])
    (blocks,) = adapter.image_blocks(ids)
    assert len(blocks) == 1 and len(blocks[0]) == 25
