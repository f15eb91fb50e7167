"""Qwen2-VL geometry and positions: smart_resize grid -> per-token boxes in the ORIGINAL image,
checked through the real processor on painted non-square images (token k = the k-th run of
merge_size**2 patches); M-RoPE ids of image tokens = (t, start + row, start + col); module mapping,
prompt."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from geometryfixtures import adapter_for_meta, colour_index, corner_offsets, distinct_colours, paint, unnormalize

TINY_SIZES = [(91, 41), (43, 97), (64, 48), (500, 375)]
REAL_SIZES = [(500, 375), (360, 560), (1000, 180)]


def _read_tokens(processor, adapter, pixel_values: torch.Tensor, inset: int) -> np.ndarray:
    """Colours at four inset points of each of the merge**2 patches of every token: (tokens, 4 * m * m, 3)."""
    p, m = adapter.patch_size, adapter.merge_size
    patches = pixel_values.double().numpy().reshape(-1, 3, processor.image_processor.temporal_patch_size, p, p)
    patches = unnormalize(patches[:, :, 0].transpose(1, 0, 2, 3), processor.image_processor)  # (3, P, p, p)
    offsets = corner_offsets(p, inset)
    colours = np.stack([patches[:, :, dy, dx] for dy, dx in offsets], axis=-1)  # (3, P, 4)
    return colours.transpose(1, 2, 0).reshape(-1, m * m * len(offsets), 3)  # consecutive m*m patches = a token


def _inset(adapter, size, blur: int) -> int:
    new_w, new_h = adapter.resized_size(size)
    upsampling = max(new_w / size[0], new_h / size[1])
    return (math.ceil(upsampling) if upsampling > 1 else 0) + blur


@pytest.mark.parametrize(
    "variant,size,resample,blur",
    [("tiny-qwen2-vl", size, Image.Resampling.NEAREST, 0) for size in TINY_SIZES]
    + [("qwen2-vl-real-geometry", size, Image.Resampling.NEAREST, 0) for size in REAL_SIZES]
    + [("qwen2-vl-real-geometry", size, Image.Resampling.BICUBIC, 2) for size in REAL_SIZES],  # Qwen2-VL's resample
)
def test_token_boxes_match_what_the_processor_does(variant, size, resample, blur):
    adapter, processor = adapter_for_meta(variant, resample)
    cells = adapter.image_cells(size)
    ((rows, cols),) = cells.tile_shapes
    area = np.prod(cells.boxes[:, 2:] - cells.boxes[:, :2], axis=1).sum()
    assert area == pytest.approx(size[0] * size[1]), "the grid covers the whole image, nothing cut or padded"
    palette = distinct_colours(cells.num_tokens)
    enc = processor(images=paint(size, cells.boxes, palette), text=adapter.format_prompt("Hi."), return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, rows * adapter.merge_size, cols * adapter.merge_size]]
    assert int((enc["input_ids"] == adapter.image_token_id).sum()) == cells.num_tokens == rows * cols
    read = _read_tokens(processor, adapter, enc["pixel_values"], _inset(adapter, size, blur))
    expected = np.arange(cells.num_tokens)[:, None].repeat(read.shape[1], 1)
    np.testing.assert_array_equal(colour_index(read, cells.num_tokens), expected)


def test_smart_resize_grid_examples():
    adapter, _ = adapter_for_meta("qwen2-vl-real-geometry")
    assert adapter.factor == 28
    cells = adapter.image_cells((640, 480))  # 644 x 476 -> 23 x 17 tokens of 28 px
    assert adapter.resized_size((640, 480)) == (644, 476)
    assert cells.tile_shapes == ((17, 23),) and cells.tile_kinds == ("grid",)
    k = cells.token_index(0, 2, 5)
    np.testing.assert_allclose(cells.boxes[k], [5 * 640 / 23, 2 * 480 / 17, 6 * 640 / 23, 3 * 480 / 17])
    assert cells.grid_boxes().shape == (17, 23, 4)
    huge = adapter.image_cells((4000, 3000))  # capped at max_pixels = 28*28*1280
    assert huge.num_tokens <= 1280


def test_mrope_positions_of_image_tokens_follow_the_grid(synthetic, make_inputs):
    _, processor, adapter = synthetic("tiny-qwen2-vl")
    size = (91, 41)
    inputs = make_inputs(processor, adapter, size=size)
    ids = inputs["input_ids"]
    positions = adapter.rope_positions(ids, image_grid_thw=inputs["image_grid_thw"])
    assert positions.ids.shape == (3, 1, ids.shape[1])
    (image,) = adapter.image_positions(ids)
    start = int(image[0])  # text before the image: positions 0 .. start - 1 in all components
    assert positions.ids[:, 0, :start].tolist() == [list(range(start))] * 3
    (table,) = adapter.image_token_cells(ids, image_sizes=[[size]])
    got = positions.ids[:, 0, image].T  # (N, 3): temporal, height, width
    np.testing.assert_array_equal(got[:, 0].numpy(), start)
    np.testing.assert_array_equal(got[:, 1].numpy(), start + table[:, 1])
    np.testing.assert_array_equal(got[:, 2].numpy(), start + table[:, 2])
    ((rows, cols),) = adapter.image_cells(size).tile_shapes
    after = int(image[-1]) + 1
    assert positions.ids[:, 0, after].tolist() == [start + max(rows, cols)] * 3
    assert positions.delta == start + max(rows, cols) - after
    # continuation: sequence index T -> T + delta, every component
    length = ids.shape[1]
    continued = [length + positions.delta, length + 1 + positions.delta]
    assert positions.span(length, length + 2, batch=2).tolist() == [[continued] * 2] * 3
    both = positions.span(length - 1, length + 1)
    assert both[:, 0, 0].tolist() == positions.ids[:, 0, -1].tolist() and both[0, 0, 1] == both[0, 0, 0] + 1


def test_cells_positions_and_mapping(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-qwen2-vl")
    size = (64, 48)
    inputs = make_inputs(processor, adapter, size=size)
    ids = inputs["input_ids"]
    (positions,) = adapter.image_positions(ids)
    vocab = processor.tokenizer.get_vocab()
    assert ids[0, positions[0] - 1] == vocab["<|vision_start|>"]
    assert ids[0, positions[-1] + 1] == vocab["<|vision_end|>"]
    assert len(positions) == adapter.image_cells(size).num_tokens == 6 * 8
    with pytest.raises(ValueError, match="image_sizes"):
        adapter.image_token_cells(ids)
    got = adapter.positions_of_cells(ids, [(0, 1, 0), 0], image_size=size)
    assert got.tolist() == [int(positions[0]), int(positions[8])]
    assert torch.equal(inputs["mm_token_type_ids"], adapter.mm_token_type_ids(ids))
    assert adapter.lm_head is model.lm_head
    assert adapter.embed_tokens is model.get_input_embeddings()
    assert adapter.final_norm is model.model.language_model.norm
    assert adapter.projector is model.model.visual.merger
    assert (adapter.n_layers, adapter.n_heads, adapter.n_kv_heads) == (4, 4, 2)
    assert adapter.format_prompt("hi") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert adapter.format_prompt("hi", "").startswith("<|im_start|>user\n")  # "" = no system turn
    with pytest.raises(ValueError, match="image_grid_thw"):
        adapter.rope_positions(ids)
