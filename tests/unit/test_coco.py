"""COCO access: layouts, clear errors, masks for polygon / crowd RLE / compressed RLE, selection."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cocofixtures import CocoBuilder

from vlminterp.data.coco import (CocoDataset, CocoFormatError, SelectionSpec, TARGET_COLUMNS,
                                 segmentation_to_mask, select_targets)


def _one_image_builder() -> CocoBuilder:
    b = CocoBuilder()
    b.category("cat")
    b.category("dog")
    b.image(32, 24)
    b.box(1, 1, 4, 3, 10, 8)
    return b


# ---- loading and layouts -------------------------------------------------------------------
def test_load_images_layout(tmp_path):
    root = _one_image_builder().write(tmp_path, split="train")
    ds = CocoDataset.load(root, split="train")
    assert ds.image_dir == root / "images" / "train"
    assert ds.image_ids() == [1]
    assert ds.category_names() == {1: "cat", 2: "dog"}
    assert ds.category_id("dog") == 2 and ds.category_name(1) == "cat"


def test_load_coco_layout_with_and_without_year(tmp_path):
    root = _one_image_builder().write(tmp_path, split="train2017", layout="coco")
    full = CocoDataset.load(root, split="train2017")
    assert full.image_dir == root / "train2017"
    short = CocoDataset.load(root, split="train")  # falls back to instances_train2017.json, train2017/
    assert short.annotation_file.name == "instances_train2017.json"
    assert short.image_dir == root / "train2017"
    assert short.image_path(1).is_file()


def test_explicit_image_dir(tmp_path):
    root = _one_image_builder().write(tmp_path, split="val")
    (root / "images" / "val").rename(root / "pictures")
    annotations_only = CocoDataset.load(root, split="val")  # selection needs no image yet
    assert annotations_only.image_ids() == [1]
    with pytest.raises(FileNotFoundError, match=r"image id 1: file .*images/val/000000000001.png"):
        annotations_only.image_path(1)
    ds = CocoDataset.load(root, split="val", image_dir="pictures")
    assert ds.image_path(1) == root / "pictures" / "000000000001.png"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CocoDataset.load(root, split="val", image_dir="nowhere")


def test_missing_annotation_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_test.json"):
        CocoDataset.load(tmp_path, split="test")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "top level"),
    (json.dumps({"images": [], "annotations": []}), "'categories'"),
    (json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}), r"images\[0\] lacks"),
])
def test_invalid_annotation_file_names_file(tmp_path, content, message):
    root = _one_image_builder().write(tmp_path, split="train")
    bad = root / "annotations" / "instances_train.json"
    bad.write_text(content)
    with pytest.raises(CocoFormatError, match=message) as info:
        CocoDataset.load(root, split="train")
    assert str(bad) in str(info.value)


def test_dangling_references_name_annotation(tmp_path):
    b = _one_image_builder()
    b.annotations[0]["category_id"] = 99
    root = b.write(tmp_path)
    with pytest.raises(CocoFormatError, match="annotation 1 .*category_id 99"):
        CocoDataset.load(root, split="train")


def test_image_path_errors_name_file_and_id(tmp_path):
    b = _one_image_builder()
    b.image(16, 16)
    b.image(16, 16)
    root = b.write(tmp_path)
    ds = CocoDataset.load(root, split="train")
    (root / "images" / "train" / "000000000002.png").unlink()
    (root / "images" / "train" / "000000000003.png").write_bytes(b"not a png at all")
    with pytest.raises(FileNotFoundError, match=r"image id 2: .*000000000002\.png"):
        ds.image_path(2)
    with pytest.raises(OSError, match=r"image id 3: .*000000000003\.png"):
        ds.image_path(3)
    with pytest.raises(KeyError, match="image id 7"):
        ds.image_path(7)
    assert ds.load_image(1).size == (32, 24)


def test_load_image_checks_size(tmp_path):
    b = _one_image_builder()
    root = b.write(tmp_path)
    b.images[0]["width"] = 40
    (root / "annotations" / "instances_train.json").write_text(json.dumps(b.to_json()))
    with pytest.raises(ValueError, match="32x24 but the annotations say 40x24"):
        CocoDataset.load(root, split="train").load_image(1)


# ---- masks ---------------------------------------------------------------------------------
def _mask_builder():
    rng = np.random.default_rng(3)
    painted = rng.random((24, 32)) < 0.3
    b = CocoBuilder()
    cat = b.category("thing")
    img = b.image(32, 24)
    polygon = b.box(img, cat, 4, 3, 10, 8)
    crowd = b.rle(img, cat, painted, compressed=False, iscrowd=1)
    compressed = b.rle(img, cat, painted, compressed=True, iscrowd=0)
    return b, painted, polygon, crowd, compressed


def test_masks_polygon_crowd_and_compressed(tmp_path):
    b, painted, polygon, crowd, compressed = _mask_builder()
    ds = CocoDataset.load(b.write(tmp_path), split="train")
    expected_box = np.zeros((24, 32), dtype=bool)
    expected_box[3:11, 4:14] = True
    assert np.array_equal(ds.annotation_mask(polygon), expected_box)
    for ann_id in (crowd, compressed):
        mask = ds.annotation_mask(ann_id)
        assert mask.dtype == bool and mask.shape == (24, 32)
        assert np.array_equal(mask, painted)


def test_segmentation_edge_cases():
    assert not segmentation_to_mask([], 5, 4).any()
    assert not segmentation_to_mask(None, 5, 4).any()
    # a 4-number "polygon" must not be read as a box; only the valid triangle counts
    mask = segmentation_to_mask([[0, 0, 4, 5], [0, 0, 4, 0, 0, 5]], 5, 4)
    assert 0 < mask.sum() < 20
    bytes_rle = {"counts": b"62304", "size": [5, 4]}
    assert segmentation_to_mask(bytes_rle, 5, 4).sum() == 4
    with pytest.raises(ValueError, match="annotation 9: RLE size"):
        segmentation_to_mask({"counts": [20], "size": [4, 5]}, 5, 4, where="annotation 9: ")
    with pytest.raises(ValueError, match="unsupported"):
        segmentation_to_mask(42, 5, 4)


# ---- selection -----------------------------------------------------------------------------
def _selection_builder() -> tuple[CocoBuilder, dict[str, int]]:
    """One image per rule; the names say whether (and why) each image is kept."""
    b = CocoBuilder()
    cat, dog, car = b.category("cat"), b.category("dog"), b.category("car")
    ids = {}
    ids["kept_single"] = img = b.image(64, 64)
    b.box(img, cat, 2, 2, 40, 40)  # area 1600
    ids["too_many_annotations"] = img = b.image(64, 64)
    b.box(img, cat, 2, 2, 40, 40)
    for _ in range(3):
        b.box(img, dog, 50, 50, 5, 5)
    ids["two_instances"] = img = b.image(64, 64)
    b.box(img, cat, 2, 2, 40, 40)
    b.box(img, cat, 1, 1, 30, 40)
    ids["crowd_target"] = img = b.image(64, 64)
    b.rle(img, cat, np.pad(np.ones((30, 50), bool), ((0, 34), (0, 14))), compressed=False, iscrowd=1)
    ids["area_at_low_bound"] = img = b.image(64, 64)
    b.box(img, cat, 0, 0, 40, 25)  # exactly 1000: excluded (exclusive bounds)
    ids["area_at_high_bound"] = img = b.image(64, 64)
    b.box(img, cat, 0, 0, 40, 50)  # exactly 2000
    ids["two_qualifying"] = img = b.image(64, 64)
    b.box(img, dog, 2, 2, 40, 40, ann_id=501)
    b.box(img, car, 20, 20, 40, 40, ann_id=500)  # smaller id, written second: it is the target
    ids["crowd_same_category"] = img = b.image(64, 64)
    b.box(img, cat, 2, 2, 40, 40)
    b.rle(img, cat, np.eye(64, dtype=bool), compressed=True, iscrowd=1)
    ids["kept_with_crowd_elsewhere"] = img = b.image(64, 64)
    b.box(img, dog, 2, 2, 40, 40)
    b.rle(img, car, np.eye(64, dtype=bool), compressed=False, iscrowd=1)
    b.box(img, cat, 50, 50, 10, 10)
    ids["no_annotations"] = b.image(64, 64)
    return b, ids


def test_select_targets_applies_every_rule(tmp_path):
    b, ids = _selection_builder()
    ds = CocoDataset.load(b.write(tmp_path), split="train")
    table = select_targets(ds, SelectionSpec(split="train"))
    assert list(table.columns) == list(TARGET_COLUMNS)
    assert table["image_id"].tolist() == sorted(
        [ids["kept_single"], ids["two_qualifying"], ids["kept_with_crowd_elsewhere"]])
    by_image = table.set_index("image_id")
    assert by_image.loc[ids["two_qualifying"], "annotation_id"] == 500
    assert by_image.loc[ids["two_qualifying"], "category_name"] == "car"
    assert by_image.loc[ids["two_qualifying"], "n_qualifying"] == 2
    assert by_image.loc[ids["kept_with_crowd_elsewhere"], "category_name"] == "dog"
    assert by_image.loc[ids["kept_with_crowd_elsewhere"], "n_annotations"] == 3
    row = by_image.loc[ids["kept_single"]]
    assert (row["area"], row["bbox_x"], row["bbox_w"], row["width"]) == (1600.0, 2.0, 40.0, 64)


def test_select_targets_all_targets_and_relaxed_rules(tmp_path):
    b, ids = _selection_builder()
    ds = CocoDataset.load(b.write(tmp_path), split="train")
    every = select_targets(ds, SelectionSpec(split="train", targets_per_image="all"))
    pair = every[every["image_id"] == ids["two_qualifying"]]
    assert pair["annotation_id"].tolist() == [500, 501]
    relaxed = select_targets(ds, SelectionSpec(split="train", require_single_instance=False,
                                               exclude_crowd_targets=False, max_annotations=4,
                                               target_area_range=(999.0, 2001.0)))
    assert set(ids.values()) - set(relaxed["image_id"]) == {ids["no_annotations"]}


def test_target_order_file_takes_the_first_qualifying_annotation_in_the_files_list(tmp_path):
    """The authors' rule (`target_order: file`): the first qualifying category in the image's
    annotation list, counted here from the written JSON itself; `id` takes the smallest id."""
    import json

    b, ids = _selection_builder()
    root = b.write(tmp_path)
    ds = CocoDataset.load(root, split="train")
    raw = json.loads(next((root / "annotations").glob("*.json")).read_text())
    image = ids["two_qualifying"]
    in_file = [a for a in raw["annotations"] if a["image_id"] == image]
    counts = {c: sum(a["category_id"] == c for a in in_file) for c in {a["category_id"] for a in in_file}}
    authors = next(a for a in in_file if 1000 < a["area"] < 2000 and counts[a["category_id"]] == 1
                   and not a.get("iscrowd", 0))
    by_file = select_targets(ds, SelectionSpec(split="train", target_order="file")).set_index("image_id")
    by_id = select_targets(ds, SelectionSpec(split="train")).set_index("image_id")
    assert by_file.loc[image, "annotation_id"] == authors["id"] == 501      # written first
    assert by_id.loc[image, "annotation_id"] == min(a["id"] for a in in_file) == 500
    assert by_file.loc[image, "n_qualifying"] == 2
    # the selection table counts the images where the rule mattered
    assert (by_file.drop_duplicates().query("n_qualifying > 1").index.tolist() == [image])
    other = by_file.index.difference([image])
    assert (by_file.loc[other, "annotation_id"] == by_id.loc[other, "annotation_id"]).all()
    with pytest.raises(ValueError, match="target_order"):
        SelectionSpec(target_order="random")


def test_select_targets_seeded_sample_is_deterministic(tmp_path):
    b = CocoBuilder()
    cat = b.category("cat")
    for _ in range(30):
        b.box(b.image(48, 48), cat, 1, 1, 40, 40)
    root = b.write(tmp_path / "a")
    shuffled = CocoBuilder(images=list(reversed(b.images)), annotations=list(reversed(b.annotations)),
                           categories=b.categories)
    root_shuffled = shuffled.write(tmp_path / "b")

    def pick(path, seed):
        spec = SelectionSpec(split="train", max_images=10, seed=seed)
        return select_targets(CocoDataset.load(path, split="train"), spec)["image_id"].tolist()

    first = pick(root, 1)
    assert len(first) == 10 and first == sorted(first) and set(first) <= set(range(1, 31))
    assert pick(root, 1) == first == pick(root_shuffled, 1)
    assert pick(root, 2) != first


def test_select_targets_empty_and_split_mismatch(tmp_path):
    ds = CocoDataset.load(_one_image_builder().write(tmp_path), split="train")
    empty = select_targets(ds, SelectionSpec(split="train"))
    assert empty.empty and list(empty.columns) == list(TARGET_COLUMNS)
    assert empty["image_id"].dtype == "int64"
    with pytest.raises(ValueError, match="split is 'train2017'.*'train'"):
        select_targets(ds, SelectionSpec())


@pytest.mark.parametrize("kwargs, field", [
    ({"target_area_range": (2000.0, 1000.0)}, "target_area_range"),
    ({"max_annotations": 0}, "max_annotations"),
    ({"max_images": 0}, "max_images"),
    ({"targets_per_image": "some"}, "targets_per_image"),
])
def test_selection_spec_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SelectionSpec(**kwargs)


def test_selection_spec_defaults_match_paper():
    spec = SelectionSpec()
    assert (spec.max_annotations, spec.target_area_range, spec.max_images) == (3, (1000.0, 2000.0), 1000)
    assert spec.require_single_instance and spec.exclude_crowd_targets
