"""Tests of the synthetic shapes world: determinism, COCO validity, masks vs pixels, captions."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from vlminterp.data.shapes import (
    PALETTE,
    ShapesWorldSpec,
    generate_world,
    load_world_spec,
    mask_to_uncompressed_rle,
    render_image,
)

SMALL = dict(n_train=40, n_val=12, rle_fraction=0.4)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[ShapesWorldSpec, Path]:
    spec = ShapesWorldSpec(**SMALL)
    out = tmp_path_factory.mktemp("world")
    generate_world(spec, out)
    return spec, out


def test_layout_and_spec_round_trip(world):
    spec, out = world
    for split, n in (("train", spec.n_train), ("val", spec.n_val)):
        assert len(list((out / "images" / split).glob("*.png"))) == n
        assert (out / "annotations" / f"instances_{split}.json").is_file()
        assert (out / "annotations" / f"captions_{split}.json").is_file()
    assert load_world_spec(out) == spec
    assert not list(out.rglob(".*tmp*")), "atomic writes left temporaries behind"


def test_same_seed_gives_identical_bytes_and_other_seed_differs(world, tmp_path):
    spec, out = world
    generate_world(spec, tmp_path / "again")
    assert _digest(out) == _digest(tmp_path / "again")
    generate_world(ShapesWorldSpec(**{**SMALL, "seed": 1}), tmp_path / "other")
    other = _digest(tmp_path / "other")
    assert other["images/train/000001.png"] != _digest(out)["images/train/000001.png"]
    assert other["annotations/instances_train.json"] != _digest(out)["annotations/instances_train.json"]


def test_val_images_do_not_depend_on_train_size():
    small, large = ShapesWorldSpec(n_train=5), ShapesWorldSpec(n_train=500)
    a, _ = render_image(small, "val", 3)
    b, _ = render_image(large, "val", 3)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("split", ["train", "val"])
def test_pycocotools_masks_match_painted_pixels(world, split):
    spec, out = world
    coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == set(spec.shapes)
    kinds = set()
    for image_id, image in coco.imgs.items():
        pixels = np.asarray(Image.open(out / "images" / split / image["file_name"]).convert("RGB"))
        assert pixels.shape == (spec.image_size, spec.image_size, 3)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert spec.min_objects <= len(anns) <= spec.max_objects
        union = np.zeros(pixels.shape[:2], dtype=int)
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            colour = np.all(pixels == np.array(PALETTE[ann["attributes"]["color"]]), axis=-1)
            assert np.array_equal(mask, colour), f"image {image_id} annotation {ann['id']}"
            assert ann["area"] == mask.sum() > 0
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            is_rle = isinstance(ann["segmentation"], dict)
            assert ann["iscrowd"] == int(is_rle)
            kinds.add("rle" if is_rle else "polygon")
            union += mask
        assert union.max() <= 1, f"objects overlap in image {image_id}"
    assert kinds == {"rle", "polygon"}


def test_unique_shapes_and_colours_per_image(world):
    _, out = world
    data = json.loads((out / "annotations" / "instances_train.json").read_text())
    per_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    for anns in per_image.values():
        assert len({a["category_id"] for a in anns}) == len(anns)
        assert len({a["attributes"]["color"] for a in anns}) == len(anns)


def test_captions_name_every_object(world):
    _, out = world
    instances = json.loads((out / "annotations" / "instances_val.json").read_text())
    captions = json.loads((out / "annotations" / "captions_val.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    assert {c["image_id"] for c in captions["annotations"]} == {i["id"] for i in instances["images"]}
    for ann in instances["annotations"]:
        for caption in (c["caption"] for c in captions["annotations"] if c["image_id"] == ann["image_id"]):
            assert f"{ann['attributes']['color']} {names[ann['category_id']]}" in caption


def test_overlap_when_allowed_keeps_masks_consistent():
    spec = ShapesWorldSpec(image_size=48, n_train=1, n_val=0, max_objects=3, min_objects=3,
                           allow_overlap=True, max_object_cells=3, min_object_cells=3)
    overlaps = 0
    for index in range(30):
        pixels, objects = render_image(spec, "train", index)
        masks = [o.mask for o in objects]
        assert sum(m.astype(int) for m in masks).max() <= 1, "visible masks must be disjoint"
        for o in objects:
            assert np.array_equal(np.all(pixels == PALETTE[o.color], axis=-1), o.mask)
        overlaps += len(objects) < 3 or any(o.as_rle for o in objects)
    assert overlaps > 0


def test_uncompressed_rle_round_trip():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((7, 9)) < 0.5
        rle = mask_utils.frPyObjects(mask_to_uncompressed_rle(mask), 7, 9)
        assert np.array_equal(mask_utils.decode(rle).astype(bool), mask)


@pytest.mark.parametrize("field, value", [
    ("cell_size", 17), ("shapes", ("circle", "blob")), ("colors", ("grey",)), ("max_objects", 0),
    ("background", "clouds"), ("rle_fraction", 1.5), ("max_object_cells", 7), ("n_val", -1),
])
def test_spec_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ShapesWorldSpec(**{field: value})


def test_too_many_objects_for_grid_is_rejected():
    with pytest.raises(ValueError, match="max_objects"):
        ShapesWorldSpec(image_size=32, max_objects=2, max_object_cells=2)
