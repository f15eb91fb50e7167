"""Real COCO (coco-mini): object cells of every mask against an independent integer computation;
the paper's target selection recomputed with pycocotools; targets outside the crop excluded and counted.

What "a mask pixel lies in a cell" means. The mask is in original pixels: pixel (x, y) is the unit
square [x, x+1) x [y, y+1). A cell is a 14 x 14 patch of the 336 x 336 model input; inverting the
resize (and the crop or the padding) makes it a box of the original image with rational edges.
The cell's overlap is (area of the mask pixels' squares inside the box) / (box area), and the cell
holds the object when that area is positive. Under "crop" what lies outside the crop is in no cell;
under "pad" the box is clipped to the image and a cell wholly in the padding has no box.

The reference here works per axis at an integer common scale. "crop" (HF LLaVA-1.5 processor):
the short side L -> 336, the long side -> int(336 * long / short); the resized length R; crop
offset o = (R - 336) // 2. Original coordinate x and resized coordinate u are the same point when
x * R = u * L, so in units of 1 / R original pixels pixel x spans [x R, (x + 1) R) and cell c spans
[(o + 14 c) L, (o + 14 c + 14) L). "pad" (original LLaVA): pad to a side x side square with offset
p = (side - L) // 2, resize side -> 336: in units of 1 / 336 pixel x spans [(x + p) 336,
(x + p + 1) 336), cell c spans [14 c side, 14 (c + 1) side), clipped to the image [p 336, (p + L) 336).
The covered area of cell (r, c) is sum_{y, x} Ly[r, y] mask[y, x] Lx[c, x] with L* the integer
interval overlaps (a matrix product; exact in float64, every sum being below 2^53), the box area
the product of the clipped cell lengths.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
from geometryfixtures import adapter_for_meta
from pycocotools.coco import COCO
from shared_fixtures import COCO_MINI, require

from vlminterp.data.coco import CocoDataset
from vlminterp.data.coco import SelectionSpec, select_targets
from vlminterp.experiments.neo.ablation import AblationSpec, run_token_ablation
from vlminterp.experiments.neo.blocking import BlockingSpec, run_attention_blocking
from vlminterp.experiments.neo.prompts import PromptSpec
from vlminterp.experiments.shared.session import Session
from vlminterp.geometry import EXCLUDED_OUTSIDE_CROP, mask_tokens
from vlminterp.experiments.shared.cells import CellSpec, cells_by_image, map_object_cells
from vlminterp.scoring.vocabulary import load_vocabulary
from vlminterp.stats import excluded_counts, excluded_note

INPUT, PATCH, SHORTEST = 336, 14, 336
SPLITS = ("train2017", "val2017")


def interval_overlaps(cell_lo, cell_hi, pixel_lo, pixel_hi) -> np.ndarray:
    """(cells, pixels) integer lengths of [cell_lo, cell_hi) n [pixel_lo, pixel_hi)."""
    lo = np.maximum(np.asarray(cell_lo)[:, None], np.asarray(pixel_lo)[None, :])
    hi = np.minimum(np.asarray(cell_hi)[:, None], np.asarray(pixel_hi)[None, :])
    return np.maximum(hi - lo, 0).astype(np.int64)


def crop_axis(length: int, resized: int) -> tuple[np.ndarray, np.ndarray]:
    """(overlaps (cells, length), cell lengths) of one axis under the centre crop."""
    offset = (resized - INPUT) // 2
    starts = (offset + PATCH * np.arange(INPUT // PATCH)) * length
    pixels = np.arange(length) * resized
    return interval_overlaps(starts, starts + PATCH * length, pixels, pixels + resized), np.full(len(starts), PATCH * length)


def pad_axis(length: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(overlaps (cells, length), visible cell lengths) of one axis under padding to a square."""
    pad = (side - length) // 2
    starts = PATCH * np.arange(INPUT // PATCH) * side
    lo = np.maximum(starts, pad * INPUT)
    hi = np.minimum(starts + PATCH * side, (pad + length) * INPUT)
    pixels = (np.arange(length) + pad) * INPUT
    return interval_overlaps(lo, hi, pixels, pixels + INPUT), np.maximum(hi - lo, 0)


def reference_cells(mask: np.ndarray, geometry: str) -> tuple[np.ndarray, np.ndarray]:
    """(covered, area) per cell, row-major, as Python ints at the axis scales above."""
    height, width = mask.shape
    if geometry == "crop":
        if width <= height:
            resized_w, resized_h = SHORTEST, int(SHORTEST * height / width)
        else:
            resized_w, resized_h = int(SHORTEST * width / height), SHORTEST
        (lx, cx), (ly, cy) = crop_axis(width, resized_w), crop_axis(height, resized_h)
    else:
        side = max(width, height)
        (lx, cx), (ly, cy) = pad_axis(width, side), pad_axis(height, side)
    covered = np.rint(ly.astype(np.float64) @ mask.astype(np.float64) @ lx.T.astype(np.float64)).astype(np.int64)
    area = cy[:, None].astype(object) * cx[None, :].astype(object)
    return covered.reshape(-1).astype(object), area.reshape(-1)


@pytest.fixture(scope="module")
def llava_adapter():
    adapter, _ = adapter_for_meta("real-geometry")
    grid = adapter.grid
    assert (grid.rows, grid.cols, grid.patch_size, grid.input_size, grid.shortest_edge) == (24, 24, PATCH, INPUT, SHORTEST)
    return adapter


def every_annotation(dataset: CocoDataset) -> pd.DataFrame:
    """A selection-shaped table with one row per annotation of the split (crowd included)."""
    return pd.DataFrame([{"image_id": a["image_id"], "annotation_id": a["id"]} for a in dataset.coco.dataset["annotations"]])


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("geometry", ["crop", "pad"])
def test_object_cells_of_every_real_coco_mask_equal_the_integer_reference(split, geometry, llava_adapter):
    root = require(COCO_MINI)
    dataset = CocoDataset.load(root, split)
    coco = COCO(str(root / "annotations" / f"instances_{split}.json"))  # the reference decodes with pycocotools
    table = map_object_cells(dataset, every_annotation(dataset), llava_adapter, CellSpec(geometry=geometry, buffers=(0,)))
    covered, area, strict, reasons = [], [], [], []
    for annotation_id in table["annotation_id"].drop_duplicates():
        annotation = coco.anns[int(annotation_id)]
        mask = coco.annToMask(annotation).astype(bool)
        ann_covered, ann_area = reference_cells(mask, geometry)
        covered.extend(ann_covered)
        area.extend(ann_area)
        reasons += [EXCLUDED_OUTSIDE_CROP if mask.any() and not any(c > 0 for c in ann_covered) else ""] * len(ann_area)
        # min_overlap 0.5 through the same per-image geometry the table used
        info = coco.imgs[annotation["image_id"]]
        boxes = llava_adapter.image_cells((info["width"], info["height"]), geometry).pixel_boxes
        strict.extend(mask_tokens(mask, boxes, min_overlap=0.5)[1])
    assert table["cell_index"].tolist() == list(range(576)) * (len(table) // 576)
    assert table["object_b0"].tolist() == [c > 0 for c in covered]  # a cell holds the object iff a mask pixel lies in it
    assert table["overlap"].tolist() == [c / a if a else 0.0 for c, a in zip(covered, area)]  # exact, rounded once
    assert strict == [2 * c > a for c, a in zip(covered, area)]
    assert table[["x0", "y0", "x1", "y1"]].isna().all(axis=1).tolist() == [a == 0 for a in area]  # padding: no box
    assert table["excluded"].fillna("").tolist() == reasons
    crowd = {a["id"] for a in coco.dataset["annotations"] if a["iscrowd"]}
    assert crowd and crowd <= set(table["annotation_id"])  # crowd RLE masks are among them
    # real annotations lie wholly outside the centre crop; under padding every object is seen
    assert (EXCLUDED_OUTSIDE_CROP in reasons) == (geometry == "crop")


def test_padding_rows_and_columns_have_no_box(llava_adapter):
    """A 640 x 427 image padded to 640 x 640: rows of cells wholly in the padding have no box
    (no sliver at y = 336 - 1e-14), and their neighbours are clipped to the image exactly."""
    cells = llava_adapter.image_cells((640, 427), "pad")
    shown = cells.pixel_boxes.shown.reshape(24, 24)
    # padding is 106 px above (106 * 336 / 640 = 55.65 input px: cell rows 0-2 wholly, row 3 partly)
    # and 107 px below (rows 20-23 wholly out: 20 * 14 = 280 >= (106 + 427) * 336 / 640 = 279.825)
    assert not shown[:3].any() and shown[3:20].all() and not shown[20:].any()
    assert cells.pixel_boxes.edges(3 * 24)[1] == 0 and cells.pixel_boxes.edges(19 * 24)[3] == 427
    assert cells.pixel_boxes.edges(19 * 24)[1] == Fraction(19 * 14 * 640, 336) - 106


# ---- the paper's target selection, and targets the crop cuts away ------------------------------------
def paper_targets(coco: COCO) -> dict[int, list[int]]:
    """Neo et al.'s rule recomputed with pycocotools alone: images with at most 3 annotations (crowd
    included); a target is a non-crowd annotation with area in (1000, 2000) whose category has
    exactly one annotation (crowd included) in the image. image id -> its targets' ids, sorted."""
    out = {}
    for image_id in coco.getImgIds():
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
        if not 1 <= len(annotations) <= 3:
            continue
        per_category = [a["category_id"] for a in annotations]
        targets = sorted(a["id"] for a in annotations if 1000 < a["area"] < 2000 and not a["iscrowd"]
                         and per_category.count(a["category_id"]) == 1)
        if targets:
            out[image_id] = targets
    return out


@pytest.fixture(scope="module")
def train2017():
    root = require(COCO_MINI)
    return CocoDataset.load(root, "train2017"), COCO(str(root / "annotations" / "instances_train2017.json"))


def test_selection_equals_the_papers_rule_recomputed_with_pycocotools(train2017):
    dataset, coco = train2017
    expected = paper_targets(coco)
    assert expected  # coco-mini has such images
    every = select_targets(dataset, SelectionSpec(split="train2017", max_images=None, targets_per_image="all"))
    assert sorted(zip(every["image_id"], every["annotation_id"])) == sorted(
        (image_id, target) for image_id, targets in expected.items() for target in targets)
    first = select_targets(dataset, SelectionSpec(split="train2017", max_images=None))
    assert dict(zip(first["image_id"], first["annotation_id"])) == {i: t[0] for i, t in expected.items()}
    assert dict(zip(first["image_id"], first["n_qualifying"])) == {i: len(t) for i, t in expected.items()}


def test_targets_outside_the_crop_are_excluded_and_counted_by_n1_and_n3(train2017, llava_adapter, synthetic):
    """Targets wholly outside the centre crop (by the integer reference) are excluded in the cell
    table and counted, not run, by N1 and N3; under padding none is. coco-mini holds a single
    target under the paper's rule, so the targets here are those of a looser rule (any number of
    annotations and instances; area still in (1000, 2000))."""
    dataset, coco = train2017
    selection = select_targets(dataset, SelectionSpec(split="train2017", max_annotations=10_000, max_images=None,
                                                      require_single_instance=False))
    outside = {int(image_id) for image_id, annotation_id in zip(selection["image_id"], selection["annotation_id"])
               if not any(c > 0 for c in reference_cells(coco.annToMask(coco.anns[int(annotation_id)]), "crop")[0])}
    assert outside  # real targets the crop cuts away
    crop = map_object_cells(dataset, selection, llava_adapter, CellSpec(geometry="crop"))
    pad = map_object_cells(dataset, selection, llava_adapter, CellSpec(geometry="pad"))
    grids = cells_by_image(crop)
    assert {i for i, cells in grids.items() if cells.excluded} == outside
    assert all(grids[i].excluded == EXCLUDED_OUTSIDE_CROP and not grids[i].object_b[2].any() for i in outside)
    assert not pad["excluded"].fillna("").ne("").any()
    # the experiments: an excluded target is counted and never run (no image is even loaded: the
    # model below has the real 576-token geometry, yet nothing is computed)
    model, processor, adapter = synthetic("real-geometry")
    chosen = selection[selection["image_id"].isin(outside)]
    prompts = PromptSpec(vqa_question="What is the {name} made of?")
    session = Session.from_model(model, processor, dataset,
                                 vocabulary=load_vocabulary("coco", categories=list(dataset.category_names().values())))
    ablation = run_token_ablation(session, chosen, AblationSpec(), cells=grids, prompts=prompts, mean=torch.zeros(1))
    assert len(ablation) == 3 * len(outside) and not ablation["included"].any() and set(ablation["condition"]) == {"none"}
    assert excluded_counts(ablation) == {EXCLUDED_OUTSIDE_CROP: len(outside)}
    blocking = run_attention_blocking(session, chosen, BlockingSpec(), cells=grids, prompts=prompts)
    assert len(blocking) == len(outside) and excluded_counts(blocking) == {EXCLUDED_OUTSIDE_CROP: len(outside)}
    assert excluded_note(excluded_counts(blocking)) == f"{len(outside)} excluded: object outside the crop ({len(outside)})"


def resize_axis(length: int, parts: int) -> np.ndarray:
    """(parts, length) integer overlaps when [0, length) is split into `parts` equal cells: in units
    of 1 / parts pixels, pixel x spans [x parts, (x + 1) parts) and cell k spans [k length, (k + 1) length)."""
    starts = np.arange(parts) * length
    pixels = np.arange(length) * parts
    return interval_overlaps(starts, starts + length, pixels, pixels + parts)


@pytest.mark.parametrize("variant", ["internvl-real-geometry", "qwen2-vl-real-geometry"])
def test_tiled_and_dynamic_grid_object_tokens_of_real_masks_equal_the_integer_reference(variant):
    """InternVL (tiles cut from the image resized to the tile canvas, + a thumbnail) and Qwen2-VL
    (one grid over the resized image): every token splits the ORIGINAL image evenly along each
    axis, so a tile t of a cols x rows canvas with g x g tokens covers x parts c g .. c g + g - 1
    of cols g equal parts (the thumbnail: g parts); Qwen2-VL's grid: its own parts. Every third
    annotation of val2017 (time; the tile layout comes from the adapter, itself checked against
    the real processor in test_adapters_internvl.py)."""
    root = require(COCO_MINI)
    adapter, _ = adapter_for_meta(variant)
    coco = COCO(str(root / "annotations" / "instances_val2017.json"))
    tile_counts = set()
    for annotation in coco.dataset["annotations"][::3]:
        info = coco.imgs[annotation["image_id"]]
        width, height = info["width"], info["height"]
        mask = coco.annToMask(annotation).astype(bool)
        cells = adapter.image_cells((width, height))
        expected = []
        for tile, (rows, cols) in enumerate(cells.tile_shapes):
            if cells.tile_kinds[tile] == "tile":
                canvas_cols, canvas_rows = adapter.tile_layout((width, height))
                tile_row, tile_col = divmod(tile, canvas_cols)
                lx = resize_axis(width, canvas_cols * cols)[tile_col * cols:(tile_col + 1) * cols]
                ly = resize_axis(height, canvas_rows * rows)[tile_row * rows:(tile_row + 1) * rows]
            else:  # the thumbnail, or Qwen2-VL's single grid: the whole image
                lx, ly = resize_axis(width, cols), resize_axis(height, rows)
            covered = ly.astype(np.float64) @ mask.astype(np.float64) @ lx.T.astype(np.float64)
            expected.extend((covered > 0).reshape(-1))
        overlap, selected = mask_tokens(mask, cells.pixel_boxes)
        assert selected.tolist() == expected, f"{variant}: annotation {annotation['id']}"
        tile_counts.add(cells.num_tiles)
    assert variant.startswith("qwen") or max(tile_counts) > 2  # several tiles and a thumbnail were exercised
