"""InternVL geometry: tiles + thumbnail -> per-token cells and boxes in the ORIGINAL image, checked
through the real processor on painted non-square images; pixel shuffle = 2x2 patch blocks, row-major;
positions of (tile, row, col) cells; module mapping and prompt."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from geometryfixtures import adapter_for_meta, colour_index, corner_offsets, distinct_colours, paint, unnormalize

TINY_SIZES = [(91, 41), (50, 130), (64, 48), (500, 375), (333, 500)]
REAL_SIZES = [(1000, 450), (500, 1300), (640, 480)]  # 2x1, 1x3 and 4x3 (+ thumbnail) tiles


def _read_tile_tokens(processor, pixel_values: torch.Tensor, adapter, tile: int, inset: int) -> np.ndarray:
    """Colours at four inset points of every token's pixel block in one tile: (tokens, 4, 3)."""
    pixels = unnormalize(pixel_values[tile].double().numpy(), processor.image_processor)  # (3, S, S)
    rows, cols = adapter.tile_grid
    cell = adapter.tile_size[0] // rows  # pixels of the tile per token side (2 patches)
    out = np.zeros((rows * cols, 4, 3))
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        for j, (dy, dx) in enumerate(corner_offsets(cell, inset)):
            out[k, j] = pixels[:, r * cell + dy, c * cell + dx]
    return out


def _inset(adapter, size, blur: int) -> int:
    """Points inset by more than one ORIGINAL pixel when the processor upsamples (the painted boxes
    are whole original pixels), plus `blur` pixels clear of the bicubic kernel."""
    cols, rows = adapter.tile_layout(size)
    upsampling = max(cols * adapter.tile_size[1] / size[0], rows * adapter.tile_size[0] / size[1])
    return (math.ceil(upsampling) if upsampling > 1 else 0) + blur


@pytest.mark.parametrize(
    "variant,size,resample,blur",
    [("tiny-internvl", size, Image.Resampling.NEAREST, 0) for size in TINY_SIZES]
    + [("internvl-real-geometry", size, Image.Resampling.NEAREST, 0) for size in REAL_SIZES]
    + [("internvl-real-geometry", size, Image.Resampling.BICUBIC, 3) for size in REAL_SIZES],  # InternVL's resample
)
def test_token_boxes_match_what_the_processor_does(variant, size, resample, blur):
    """Paint every token's box (tiles, then the thumbnail) in its own colour on a non-square
    original, run the real processor, and read each token's pixel block back from pixel_values."""
    adapter, processor = adapter_for_meta(variant, resample)
    cells = adapter.image_cells(size)
    assert cells.boxes.shape == (cells.num_tokens, 4) and not np.isnan(cells.boxes).any()
    prompt = adapter.format_prompt("Describe this image.")
    inset = _inset(adapter, size, blur)
    for kind in ("tile", "thumbnail"):
        tiles = [t for t, k in enumerate(cells.tile_kinds) if k == kind]
        if not tiles:
            assert kind == "thumbnail" and cells.num_tiles == 1
            continue
        tokens = np.concatenate([cells.tokens_of_tile(t) for t in tiles])
        # the tiles of one kind partition the image: their token boxes cover it exactly once
        area = np.prod(cells.boxes[tokens, 2:] - cells.boxes[tokens, :2], axis=1).sum()
        assert area == pytest.approx(size[0] * size[1])
        palette = distinct_colours(len(tokens))
        enc = processor(images=paint(size, cells.boxes[tokens], palette), text=prompt, return_tensors="pt")
        assert enc["pixel_values"].shape[0] == cells.num_tiles
        assert int((enc["input_ids"] == adapter.image_token_id).sum()) == cells.num_tokens
        read = np.concatenate([_read_tile_tokens(processor, enc["pixel_values"], adapter, t, inset) for t in tiles])
        np.testing.assert_array_equal(colour_index(read, len(tokens)), np.arange(len(tokens))[:, None].repeat(4, 1))


def test_tile_layout_follows_the_aspect_ratio():
    adapter, _ = adapter_for_meta("internvl-real-geometry")
    wide = adapter.image_cells((1200, 400))  # 3:1 -> 3 columns x 1 row + thumbnail
    assert adapter.tile_layout((1200, 400)) == (3, 1)
    assert wide.tile_kinds == ("tile", "tile", "tile", "thumbnail")
    assert wide.num_tokens == 4 * 256 and wide.tile_shapes == ((16, 16),) * 4
    np.testing.assert_allclose(wide.tile_boxes[:3, 0], [0, 400, 800])
    np.testing.assert_allclose(wide.tile_boxes[3], [0, 0, 1200, 400])
    square_small = adapter.image_cells((448, 448))  # one tile: no thumbnail
    assert square_small.tile_kinds == ("tile",) and square_small.num_tokens == 256
    # token (tile 1, row 2, col 5) covers a 1200/3/16 x 400/16 px block of the second tile
    k = wide.token_index(1, 2, 5)
    np.testing.assert_allclose(wide.boxes[k], [400 + 5 * 25, 2 * 25, 400 + 6 * 25, 3 * 25])
    assert wide.grid_boxes(1).shape == (16, 16, 4)


def test_pixel_shuffle_makes_each_token_a_2x2_patch_block(synthetic):
    model, _, adapter = synthetic("tiny-internvl")
    side = adapter.tile_size[0] // model.config.vision_config.patch_size[0]  # patches per tile side
    patch_index = torch.arange(side * side, dtype=torch.float32).reshape(1, side, side, 1)
    shuffled = model.model.pixel_shuffle(patch_index, scale_factor=model.config.downsample_ratio)
    rows, cols = adapter.tile_grid
    tokens = shuffled.reshape(rows * cols, -1)  # the reshape get_image_features applies, row-major
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        expected = {(2 * r + dy) * side + 2 * c + dx for dy in (0, 1) for dx in (0, 1)}
        assert set(tokens[k].long().tolist()) == expected


def test_image_blocks_cells_and_positions(synthetic, make_inputs):
    _, processor, adapter = synthetic("tiny-internvl")
    size = (64, 48)
    ids = make_inputs(processor, adapter, size=size)["input_ids"]
    (positions,) = adapter.image_positions(ids)
    cells = adapter.image_cells(size)
    assert len(positions) == cells.num_tokens == 5 * 16 and (positions.diff() == 1).all()
    vocab = processor.tokenizer.get_vocab()
    assert ids[0, positions[0] - 1] == vocab["<img>"] and ids[0, positions[-1] + 1] == vocab["</img>"]
    with pytest.raises(ValueError, match="image_sizes"):
        adapter.image_token_cells(ids)
    (table,) = adapter.image_token_cells(ids, image_sizes=[[size]])
    assert table.shape == (80, 3) and table[16].tolist() == [1, 0, 0] and table[-1].tolist() == [4, 3, 3]
    with pytest.raises(ValueError, match="wrong size"):
        adapter.image_token_cells(ids, image_sizes=[[(40, 40)]])  # one tile: a different token count
    got = adapter.positions_of_cells(ids, [(4, 3, 3), (0, 0, 0), 17], image_size=size)
    assert got.tolist() == [int(positions[0]), int(positions[17]), int(positions[-1])]
    with pytest.raises(ValueError, match="tile, row, col"):
        adapter.positions_of_cells(ids, [(0, 0)], image_size=size)
    with pytest.raises(IndexError):
        adapter.positions_of_cells(ids, [(5, 0, 0)], image_size=size)
    with pytest.raises(NotImplementedError, match="image_cells"):
        adapter.grid


def test_two_images_are_two_blocks(synthetic, random_image):
    _, processor, adapter = synthetic("tiny-internvl")
    prompt = adapter.format_prompt("Compare.").replace("<IMG_CONTEXT>", "<IMG_CONTEXT>\n<IMG_CONTEXT>")
    sizes = [(64, 48), (91, 41)]
    enc = processor(images=[random_image(0, sizes[0]), random_image(1, sizes[1])], text=prompt, return_tensors="pt")
    (blocks,) = adapter.image_blocks(enc["input_ids"])
    assert [len(b) for b in blocks] == [adapter.image_cells(s).num_tokens for s in sizes] == [80, 48]
    second = adapter.positions_of_cells(enc["input_ids"], [(2, 0, 0)], image_index=1, image_size=sizes[1])
    assert second.tolist() == [int(blocks[1][32])]


def test_geometry_and_prompt(synthetic):  # module paths: test_adapters.py::test_module_mapping
    _, _, adapter = synthetic("tiny-internvl")
    assert adapter.geometries == ("resize",)
    with pytest.raises(ValueError, match="geometry"):
        adapter.cell_boxes((10, 10), "crop")
    assert adapter.format_prompt("hi") == "<|im_start|>user\n<IMG_CONTEXT>\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert adapter.format_prompt("hi", "Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert adapter.eos_token_ids[0] == adapter.text_config.eos_token_id
