"""Tiny COCO-format datasets written by tests: images, polygon, RLE and crowd annotations.

    from cocofixtures import CocoBuilder

    b = CocoBuilder()
    cat = b.category("cat")
    img = b.image(64, 48)
    b.box(img, cat, 10, 5, 20, 30)                         # rectangle polygon
    b.rle(img, cat, mask, compressed=False, iscrowd=1)      # crowd, counts as a list
    root = b.write(tmp_path, split="train")                 # images/train/*.png + annotations/

Areas and boxes are computed with pycocotools directly (not with the code under test), unless
given explicitly to exercise the selection rules. `tests/` is on sys.path because pytest
prepends the directory of the root conftest.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def _bbox_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO crowd-style RLE: column-major run lengths starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    counts: list[int] = []
    current, run = False, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


@dataclass
class CocoBuilder:
    """Accumulates images, categories and annotations, then writes a COCO-format directory."""

    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    categories: list[dict[str, Any]] = field(default_factory=list)
    _next_ann_id: int = 1

    def category(self, name: str, category_id: int | None = None) -> int:
        cid = category_id if category_id is not None else len(self.categories) + 1
        self.categories.append({"id": cid, "name": name, "supercategory": "thing"})
        return cid

    def image(self, width: int, height: int, image_id: int | None = None) -> int:
        iid = image_id if image_id is not None else len(self.images) + 1
        self.images.append({"id": iid, "file_name": f"{iid:012d}.png", "width": width, "height": height})
        return iid

    def _size(self, image_id: int) -> tuple[int, int]:
        info = next(img for img in self.images if img["id"] == image_id)
        return info["height"], info["width"]

    def _add(self, image_id: int, category_id: int, segmentation: Any, area: float, bbox: list[float],
             iscrowd: int, ann_id: int | None) -> int:
        aid = ann_id if ann_id is not None else self._next_ann_id
        self._next_ann_id = max(self._next_ann_id, aid) + 1
        self.annotations.append({"id": aid, "image_id": image_id, "category_id": category_id,
                                 "segmentation": segmentation, "area": float(area), "bbox": bbox,
                                 "iscrowd": iscrowd})
        return aid

    def polygon(self, image_id: int, category_id: int, polygons: list[list[float]], *,
                area: float | None = None, ann_id: int | None = None) -> int:
        height, width = self._size(image_id)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        xs = [v for poly in polygons for v in poly[0::2]]
        ys = [v for poly in polygons for v in poly[1::2]]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        return self._add(image_id, category_id, polygons,
                         float(mask_utils.area(rle)) if area is None else area, bbox, 0, ann_id)

    def box(self, image_id: int, category_id: int, x: float, y: float, w: float, h: float, *,
            area: float | None = None, ann_id: int | None = None) -> int:
        """A rectangle polygon; pycocotools fills pixel columns x..x+w-1 and rows y..y+h-1."""
        return self.polygon(image_id, category_id, [[x, y, x + w, y, x + w, y + h, x, y + h]],
                            area=area, ann_id=ann_id)

    def rle(self, image_id: int, category_id: int, mask: np.ndarray, *, compressed: bool,
            iscrowd: int = 1, area: float | None = None, ann_id: int | None = None) -> int:
        """An RLE annotation: uncompressed (counts a list, COCO's crowd format) or compressed."""
        mask = np.asarray(mask, dtype=bool)
        assert mask.shape == self._size(image_id)
        if compressed:
            encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            segmentation = {"counts": encoded["counts"].decode("ascii"), "size": list(encoded["size"])}
        else:
            segmentation = uncompressed_rle(mask)
        return self._add(image_id, category_id, segmentation,
                         float(mask.sum()) if area is None else area, _bbox_of(mask), iscrowd, ann_id)

    def to_json(self) -> dict[str, Any]:
        return {"info": {"description": "test fixture"}, "licenses": [], "images": self.images,
                "annotations": self.annotations, "categories": self.categories}

    def write(self, root: Path, split: str = "train",
              layout: Literal["images", "coco"] = "images") -> Path:
        """Write annotations/instances_{split}.json and one PNG per image; return `root`.

        layout="images" puts images in root/images/{split}/, layout="coco" in root/{split}/.
        """
        root = Path(root)
        image_dir = root / "images" / split if layout == "images" else root / split
        image_dir.mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for info in self.images:
            pixels = rng.integers(0, 256, size=(info["height"], info["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image_dir / info["file_name"])
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(self.to_json()))
        return root
