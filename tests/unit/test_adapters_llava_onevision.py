"""LLaVA-OneVision (transformers' real processor over Qwen2's tokenizer files, tiny random weights of
the real config shape, real COCO images and masks): the token -> pixel geometry of the base view, the
unpadded anyres grid and its newline tokens against the processor's own outputs (token count,
image_sizes, the pixels of each patch) and the model's own packing; what ablations and knockouts do
to the newline tokens; the engine against the naive reference. The full operation table is
tests/unit/test_compatibility.py's (slow) row."""
from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from shared_fixtures import COCO_MINI, FIXTURES, require

from vlminterp.data.coco import CocoDataset
from vlminterp.experiments.shared.cells import CellSpec, cells_by_image, map_object_cells
from vlminterp.geometry import dilate_tokens
from vlminterp.geometry.objects import object_overlap
from vlminterp.interventions import Ablation, InterventionEngine, Knockout
from vlminterp.interventions.reference import reference_interventions
from vlminterp.models.adapters import LlavaOnevisionAdapter, SiteError, adapter_for
from vlminterp.testing.tiny_llava_onevision import (
    build_onevision_processor, build_tiny_llava_onevision, tiny_llava_onevision_config)

QWEN2_FOLDER = FIXTURES / "processors" / "Qwen--Qwen2-VL-2B"  # Qwen2's vocab.json / merges.txt
# landscape (the compatibility table's image), portrait, square, wide: four canvases and unpaddings
IMAGES = [139, 802, 165518, 181303]


@lru_cache(maxsize=None)
def _processor():
    return build_onevision_processor(QWEN2_FOLDER)


@lru_cache(maxsize=None)
def _coco():
    from pycocotools.coco import COCO

    return COCO(str(COCO_MINI / "annotations" / "instances_val2017.json"))


@pytest.fixture(scope="module")
def processor():
    require(QWEN2_FOLDER), require(COCO_MINI)
    return _processor()


def _image_and_mask(image_id: int) -> tuple[Image.Image, np.ndarray]:
    """The COCO image and the mask of its largest annotation."""
    coco = _coco()
    info = coco.imgs[image_id]
    largest = max(coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)), key=lambda a: a["area"])
    image = Image.open(COCO_MINI / "val2017" / info["file_name"]).convert("RGB")
    return image, coco.annToMask(largest).astype(bool)


def _model_order(config, image_size_hw: torch.Tensor, num_views: int) -> torch.Tensor:
    """(N, 3): transformers' own `pack_image_features` applied to features that name themselves,
    (view, patch row, patch col) per patch (view 0 the base image, 1.. the anyres tiles); the newline
    vector is (-1, -1, -1)."""
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    side = config.vision_config.image_size // config.vision_config.patch_size
    view, row, col = torch.meshgrid(torch.arange(num_views), torch.arange(side), torch.arange(side), indexing="ij")
    features = torch.stack([view, row, col], -1).reshape(num_views, side * side, 3).float()
    packed, _ = LlavaOnevisionModel.pack_image_features(
        SimpleNamespace(config=config), [features], image_size_hw[None], image_newline=torch.full((3,), -1.0),
        vision_aspect_ratio=config.vision_aspect_ratio)
    return packed[0].round().long()


def test_tokenizer_and_processor_settings_are_onevisions(processor):
    tokenizer, config = processor.tokenizer, tiny_llava_onevision_config()
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"])
    assert ids == [151643, 151644, 151645, config.image_token_index, config.video_token_index]
    assert ids[3:] == [151646, 151647] and tokenizer.eos_token_id == config.text_config.eos_token_id
    # the same vocab / merges as Qwen2-VL's (SOURCES.md: these ids match the published ones)
    assert tokenizer("Hello world, describe the picture.")["input_ids"] == [9707, 1879, 11, 7512, 279, 6802, 13]
    assert processor.num_image_tokens == 729 and processor.vision_feature_select_strategy == "full"
    assert processor.image_processor.image_grid_pinpoints == config.image_grid_pinpoints


@pytest.mark.parametrize("image_id", IMAGES)
def test_geometry_matches_the_processor_the_model_and_the_mask(processor, image_id):
    """Per token: its kind, row and col from the model's own packing; its box against the pixels the
    processor puts in its patch when the image is the COCO mask itself (white object on black)."""
    config = tiny_llava_onevision_config()
    adapter = LlavaOnevisionAdapter(SimpleNamespace(config=config), processor)
    image, mask = _image_and_mask(image_id)
    encoding = processor(text=adapter.format_prompt("What is in this image?"), images=image, return_tensors="pt")
    width, height = image.size
    assert encoding["image_sizes"][0].tolist() == [height, width]
    n_tokens = int((encoding["input_ids"] == config.image_token_index).sum())
    views = encoding["pixel_values"].shape[1]  # base + anyres tiles

    cells = adapter.image_cells(image.size)
    order = _model_order(config, encoding["image_sizes"][0], views)
    assert cells.num_tokens == n_tokens == len(order)
    assert cells.tile_kinds == ("base", "newline", "anyres")
    newline, base, anyres = order[:, 0] == -1, order[:, 0] == 0, order[:, 0] > 0
    np.testing.assert_array_equal(cells.tile, np.select([base, newline, anyres], [0, 1, 2]))
    assert newline.sum() == cells.tile_shapes[2][0] and bool(newline[-1])  # one newline per row, the last at the end
    assert np.isnan(cells.boxes[newline.numpy()]).all()
    np.testing.assert_array_equal(cells.row[base.numpy()], order[base, 1])
    np.testing.assert_array_equal(cells.col[base.numpy()], order[base, 2])
    # anyres tokens: their place in the model's joined tiles grid, less the rows / cols it unpadded
    from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape

    _, tiles_w = get_anyres_image_grid_shape(encoding["image_sizes"][0], config.image_grid_pinpoints,
                                             config.vision_config.image_size)
    side = config.vision_config.image_size // config.vision_config.patch_size
    view, row, col = order[anyres].T
    grid_row, grid_col = (view - 1) // tiles_w * side + row, (view - 1) % tiles_w * side + col
    np.testing.assert_array_equal(cells.row[anyres.numpy()], grid_row - grid_row.min())
    np.testing.assert_array_equal(cells.col[anyres.numpy()], grid_col - grid_col.min())

    # the mask through the processor: each token's 14 x 14 patch, in [0, 1] (SigLIP's 0.5 mean / std)
    shown = processor.image_processor(Image.fromarray(mask.astype(np.uint8) * 255).convert("RGB"), return_tensors="pt")
    pixels = shown["pixel_values"][0, :, 0] * 0.5 + 0.5
    patch = 14
    seen = np.array([-1.0 if v < 0 else float(pixels[v, patch * r: patch * (r + 1), patch * c: patch * (c + 1)].mean())
                     for v, r, c in order.tolist()])
    overlap, selected, _ = object_overlap(mask, cells)
    assert not selected[newline.numpy()].any()
    has_box = ~np.isnan(cells.boxes).any(axis=1)
    assert (seen[has_box & (overlap >= 0.8)] > 0.5).all()
    assert (seen[has_box & (overlap == 0)] < 0.3).all()
    assert (seen[~has_box & ~newline.numpy()] < 1e-6).all()  # no box: wholly in the canvas's padding
    assert (overlap[seen > 0.7] > 0).all()
    assert selected.sum() > 10 and (has_box & (overlap >= 0.8)).sum() > 5 and (has_box & (overlap == 0)).sum() > 100


def test_newline_tokens_are_never_object_cells_and_oversized_grids_are_refused(processor):
    config = tiny_llava_onevision_config()
    adapter = LlavaOnevisionAdapter(SimpleNamespace(config=config), processor)
    image, mask = _image_and_mask(139)
    cells = adapter.image_cells(image.size)
    _, selected, _ = object_overlap(mask, cells)
    newline = cells.tile == 1
    for buffer in (0, 1, 3):  # dilation stays within a tile: the newline tile holds no object token
        assert not dilate_tokens(cells, selected, buffer)[newline].any()
    assert not object_overlap(np.ones_like(mask), cells)[1][newline].any()  # not even when the object is all
    assert cells.last_row()[cells.tile == 2].sum() == cells.tile_shapes[2][1]  # the anyres grid's last row
    # the experiments' cell table (map_object_cells -> TargetCells) keeps the newline tile and its flags
    dataset = CocoDataset.load(COCO_MINI, "val2017")
    annotation = max(dataset.annotations_of(139), key=lambda a: a["area"])
    selection = pd.DataFrame({"image_id": [139], "annotation_id": [annotation["id"]]})
    (target,) = cells_by_image(map_object_cells(dataset, selection, adapter, CellSpec("resize", 0.0, (0, 2)))).values()
    assert target.tile_shapes == cells.tile_shapes and not target.excluded
    assert target.object_b[0].any() and not target.object_b[2][newline].any()
    np.testing.assert_array_equal(target.object_b[0], selected)
    with pytest.raises(NotImplementedError, match="llava_onevision: an image of 2304x2304 px"):
        adapter.image_cells((2304, 2304))
    with pytest.raises(SiteError, match="llava_onevision: no site 'image_features'"):
        adapter.site("image_features")


@torch.no_grad()
def _reference_logits(model, adapter, ids, inputs, condition, positions) -> torch.Tensor:
    """`interventions.reference_logits` unembedding only `positions` (the full 152k-word unembedding
    of every one of the ~2,700 positions is most of a forward's time)."""
    with reference_interventions(adapter, condition):
        out = model(**adapter.model_inputs(ids, **inputs), logits_to_keep=torch.tensor(positions))
    return out.logits[0]


@lru_cache(maxsize=None)
def _tiny():
    model, processor = build_tiny_llava_onevision(QWEN2_FOLDER, processor=_processor())
    adapter = adapter_for(model, processor)
    image = _image_and_mask(139)[0].resize((384, 256))  # one anyres tile: 1,261 image tokens, not 2,709
    encoding = processor(text=adapter.format_prompt("What is in this image?"), images=image, return_tensors="pt")
    return model, adapter, encoding, image.size


def test_newline_vectors_sit_on_their_positions_and_ablation_and_knockout_semantics(processor):
    """The model scatters `image_newline` onto exactly the newline positions; an ablation of them
    changes the output; a knockout of every image position (newlines included) differs from one of
    the cells alone; each equals the naive reference (the whole-image ablation: the compatibility row)."""
    model, adapter, encoding, size = _tiny()
    ids, inputs = encoding["input_ids"], adapter.image_inputs(encoding)
    (newlines,) = adapter.newline_positions(ids, [[size]])
    (image,) = adapter.image_positions(ids)
    with torch.no_grad():
        embeds = adapter.embed(ids, **inputs)[0]
    is_newline = (embeds == model.model.image_newline).all(-1)
    assert torch.nonzero(is_newline).flatten().tolist() == newlines.tolist()
    assert model.model.image_newline.abs().min() > 0
    cells_only = image[~torch.isin(image, newlines)]
    last = ids.shape[1] - 1
    conditions = [Ablation(newlines), Knockout([last], image), Knockout([last], cells_only)]
    checked = [int(newlines[0]), int(image[-1]), last]
    want = torch.stack([_reference_logits(model, adapter, ids, inputs, c, checked) for c in conditions])
    engine = InterventionEngine(model, adapter)
    clean, *got = engine.logits(engine.prepare(ids, **inputs), [None, *conditions], positions=checked)
    assert (torch.stack(got) - want).abs().max() < 1e-4
    assert (want[0] - clean).abs().max() > 1e-4, "ablating the newline vectors must change the output"
    assert (want[1, -1] - want[2, -1]).abs().max() > 1e-4, "the newline keys carry what they read from the image"
