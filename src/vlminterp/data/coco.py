"""COCO-format dataset access, annotation masks and target selection (Neo et al., N1).

    from vlminterp.data.coco import CocoDataset, SelectionSpec, select_targets

    ds = CocoDataset.load("data/coco", split="train2017")       # or a shapes-world directory
    path = ds.image_path(image_id)                               # checked: exists and decodes
    mask = ds.annotation_mask(annotation_id)                     # bool (H, W); polygon or RLE
    targets = select_targets(ds, SelectionSpec(split="train2017", max_images=1000, seed=0))

Directory layout. A dataset directory `root` holds `annotations/instances_{split}.json` and an
image directory. The image directory is `image_dir` when given (relative to `root` or absolute);
otherwise the first existing one of (the first when none exists yet: annotations alone load)
    root/images/{split}/      (e.g. a generated synthetic dataset; where COCO images are downloaded)
    root/{split}/             (COCO's own layout when split = "train2017", "val2017")
    root/{split}2017/         (COCO's own layout when split = "train", "val")
The annotation file is `annotations/instances_{split}.json`, or, when that does not exist,
`annotations/instances_{split}2017.json` (so split="train" also finds COCO 2017).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
import pandas as pd
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vlminterp.specs import configured

log = logging.getLogger(__name__)

REQUIRED_TOP_LEVEL_KEYS = ("images", "annotations", "categories")
REQUIRED_IMAGE_KEYS = ("id", "file_name", "width", "height")
REQUIRED_ANNOTATION_KEYS = ("id", "image_id", "category_id", "area", "bbox")
REQUIRED_CATEGORY_KEYS = ("id", "name")

TARGET_COLUMNS = (
    "image_id", "file_name", "width", "height", "annotation_id", "category_id",
    "category_name", "area", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
    "n_annotations", "n_qualifying",
)

INTEGER_TARGET_COLUMNS = ("image_id", "width", "height", "annotation_id", "category_id",
                          "n_annotations", "n_qualifying")
FLOAT_TARGET_COLUMNS = ("area", "bbox_x", "bbox_y", "bbox_w", "bbox_h")


class CocoFormatError(ValueError):
    """The annotation file is not valid JSON or not in COCO instances format."""


def annotation_file_candidates(root: Path, split: str) -> list[Path]:
    """Annotation files tried, in order, for `split` under `root`."""
    return [root / "annotations" / f"instances_{split}.json",
            root / "annotations" / f"instances_{split}2017.json"]


def image_dir_candidates(root: Path, split: str) -> list[Path]:
    """Image directories tried, in order, when no `image_dir` is given."""
    return [root / "images" / split, root / split, root / f"{split}2017"]


def _first_existing(candidates: list[Path], what: str, is_dir: bool) -> Path:
    for candidate in candidates:
        if (candidate.is_dir() if is_dir else candidate.is_file()):
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no {what} found; tried: {tried}")


def _read_coco_json(path: Path) -> dict[str, Any]:
    """Load and validate a COCO instances file; every error names the file and the bad entry."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise CocoFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    for key in REQUIRED_TOP_LEVEL_KEYS:
        if not isinstance(data.get(key), list):
            raise CocoFormatError(f"{path}: missing or non-list top-level key '{key}'")
    for kind, required in (("images", REQUIRED_IMAGE_KEYS),
                           ("annotations", REQUIRED_ANNOTATION_KEYS),
                           ("categories", REQUIRED_CATEGORY_KEYS)):
        seen: set[Any] = set()
        for index, entry in enumerate(data[kind]):
            missing = [k for k in required if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise CocoFormatError(f"{path}: {kind}[{index}] lacks key(s) {missing}")
            if entry["id"] in seen:
                raise CocoFormatError(f"{path}: duplicate {kind} id {entry['id']}")
            seen.add(entry["id"])
    image_ids = {img["id"] for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise CocoFormatError(
                f"{path}: annotation {ann['id']} refers to unknown image_id {ann['image_id']}")
        if ann["category_id"] not in category_ids:
            raise CocoFormatError(
                f"{path}: annotation {ann['id']} refers to unknown category_id {ann['category_id']}")
    return data


def segmentation_to_mask(segmentation: Any, height: int, width: int, *, where: str = "") -> np.ndarray:
    """Rasterise a COCO segmentation to a bool (height, width) mask.

    Accepts polygons (list of flat [x0, y0, x1, y1, ...] lists), uncompressed RLE (dict whose
    `counts` is a list of run lengths, as COCO stores crowd regions) and compressed RLE (dict
    whose `counts` is a str/bytes string). Polygons with fewer than 3 points are skipped (and a
    4-number polygon is never mistaken for a box, a pycocotools pitfall). An empty segmentation
    gives an all-False mask. `where` names the annotation in error messages.
    """
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        return np.zeros((height, width), dtype=bool)
    if isinstance(segmentation, list):
        polygons = [[float(v) for v in poly] for poly in segmentation
                    if isinstance(poly, (list, tuple)) and len(poly) >= 6 and len(poly) % 2 == 0]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(s) for s in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"{where}RLE size {size} differs from image size [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects({"counts": counts, "size": size}, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"counts": counts.encode("ascii") if isinstance(counts, str) else counts,
                   "size": size}
        else:
            raise ValueError(f"{where}RLE counts must be a list or a string, got {type(counts).__name__}")
    else:
        raise ValueError(f"{where}unsupported segmentation of type {type(segmentation).__name__}")
    with warnings.catch_warnings():
        # pycocotools 2.0.11 under numpy 2 warns about its own __array__; harmless here
        warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy",
                                category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


@dataclass
class CocoDataset:
    """One split of a COCO-format dataset: the pycocotools index plus where its images live."""

    root: Path
    split: str
    annotation_file: Path
    image_dir: Path
    coco: COCO = field(repr=False)

    @classmethod
    def load(cls, root: str | os.PathLike, split: str = "train2017",
             image_dir: str | os.PathLike | None = None) -> "CocoDataset":
        """Load `split` of the dataset under `root` (layout in the module docstring).

        Raises FileNotFoundError naming every path tried, CocoFormatError naming the file and
        the offending entry.
        """
        root = Path(root)
        annotation_file = _first_existing(
            annotation_file_candidates(root, split), f"annotation file for split '{split}'", is_dir=False)
        if image_dir is None:
            # Selection stages read annotations before any image is downloaded: without an image
            # directory yet, images are expected where download_coco_images puts them (the first
            # candidate), and image_path names the missing file if one is asked for.
            candidates = image_dir_candidates(root, split)
            resolved_dir = next((c for c in candidates if c.is_dir()), candidates[0])
        else:
            resolved_dir = Path(image_dir) if Path(image_dir).is_absolute() else root / image_dir
            if not resolved_dir.is_dir():
                raise FileNotFoundError(f"image directory {resolved_dir} does not exist")
        data = _read_coco_json(annotation_file)
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return cls(root=root, split=split, annotation_file=annotation_file,
                   image_dir=resolved_dir, coco=coco)

    # ---- look-ups -------------------------------------------------------------------------
    def image_ids(self) -> list[int]:
        """All image ids, sorted."""
        return sorted(self.coco.imgs)

    def image_info(self, image_id: int) -> dict[str, Any]:
        try:
            return self.coco.imgs[image_id]
        except KeyError:
            raise KeyError(f"image id {image_id} not in {self.annotation_file}") from None

    def annotation(self, annotation_id: int) -> dict[str, Any]:
        try:
            return self.coco.anns[annotation_id]
        except KeyError:
            raise KeyError(f"annotation id {annotation_id} not in {self.annotation_file}") from None

    def annotations_of(self, image_id: int) -> list[dict[str, Any]]:
        """Annotations of one image (crowd included), sorted by annotation id."""
        self.image_info(image_id)
        return sorted(self.coco.imgToAnns.get(image_id, []), key=lambda ann: ann["id"])

    def annotation_order(self, image_id: int) -> dict[int, int]:
        """Annotation id -> its index among the image's annotations in the file's own order (the
        order of the annotation list, which Neo et al.'s selection walks)."""
        self.image_info(image_id)
        return {ann["id"]: index for index, ann in enumerate(self.coco.imgToAnns.get(image_id, []))}

    def category_names(self) -> dict[int, str]:
        """Category id -> name, as written in the annotation file (sorted by id)."""
        return {cat_id: self.coco.cats[cat_id]["name"] for cat_id in sorted(self.coco.cats)}

    def category_name(self, category_id: int) -> str:
        try:
            return self.coco.cats[category_id]["name"]
        except KeyError:
            raise KeyError(f"category id {category_id} not in {self.annotation_file}") from None

    def category_id(self, name: str) -> int:
        """Category id of `name` (exact match)."""
        matches = [cid for cid, cname in self.category_names().items() if cname == name]
        if len(matches) != 1:
            raise KeyError(f"category name {name!r} matches {len(matches)} categories "
                           f"in {self.annotation_file}")
        return matches[0]

    def image_categories(self, image_id: int) -> set[int]:
        """Category ids with at least one annotation (crowd included) in the image."""
        return {ann["category_id"] for ann in self.annotations_of(image_id)}

    # ---- images and masks -----------------------------------------------------------------
    def image_path(self, image_id: int, *, check: bool = True) -> Path:
        """Path of the image file; with `check`, verify it exists and PIL can read it."""
        info = self.image_info(image_id)
        path = self.image_dir / info["file_name"]
        if check:
            if not path.is_file():
                raise FileNotFoundError(f"image id {image_id}: file {path} does not exist")
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as err:  # PIL raises many types for corrupt files
                raise OSError(f"image id {image_id}: file {path} cannot be decoded ({err})") from err
        return path

    def load_image(self, image_id: int) -> Image.Image:
        """Decoded RGB image; its size must match the annotation's width and height."""
        path = self.image_path(image_id, check=False)
        if not path.is_file():
            raise FileNotFoundError(f"image id {image_id}: file {path} does not exist")
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except Exception as err:
            raise OSError(f"image id {image_id}: file {path} cannot be decoded ({err})") from err
        info = self.image_info(image_id)
        if rgb.size != (info["width"], info["height"]):
            raise ValueError(f"image id {image_id}: file {path} is {rgb.size[0]}x{rgb.size[1]} but "
                             f"the annotations say {info['width']}x{info['height']}")
        return rgb

    def annotation_mask(self, annotation_id: int) -> np.ndarray:
        """Bool (height, width) mask of one annotation (polygon, crowd RLE or compressed RLE)."""
        ann = self.annotation(annotation_id)
        info = self.image_info(ann["image_id"])
        return segmentation_to_mask(ann.get("segmentation"), info["height"], info["width"],
                                    where=f"{self.annotation_file}: annotation {annotation_id}: ")


# ---- target selection (N1) --------------------------------------------------------------------
@dataclass(frozen=True)
@configured("neo.selection")
class SelectionSpec:
    """Rules choosing images and their target object; defaults follow Neo et al. (N1).

    split: the split the dataset must have been loaded with (checked by `select_targets`).
    max_annotations: keep images with at most this many annotations, crowd ones included.
    target_area_range: (low, high) bounds on the annotation's `area` field, both exclusive, px^2.
    require_single_instance: the target's category has exactly one annotation in the image
        (a crowd annotation of the same category counts as an instance, so it disqualifies).
    exclude_crowd_targets: a crowd (iscrowd=1) annotation is never a target.
    max_images: keep at most this many images (a seeded sample, then sorted); None keeps all.
    seed: seed of that sample.
    targets_per_image: "first" gives one row per image, the first qualifying annotation in
        `target_order`; "all" gives one row per qualifying annotation. Either way
        `n_qualifying` says how many annotations of the image qualified. "first" keeps N1's
        one-target-per-image design; the smallest id is independent of file order and seed, and
        `n_qualifying > 1` lets an analysis drop images where another candidate object remains.
    target_order: which qualifying annotation is the first: "id" (the smallest annotation id,
        independent of the file's order) or "file" (the first qualifying one in the image's
        annotation list as the file orders it: Neo et al.'s rule, the first qualifying category
        of the list; each qualifying category has one instance, so it is the same annotation).
    include_question_images: every qualifying image that has a VQA question (the ids handed to
        `select_targets` as `required_image_ids`: Neo et al.'s 100 question images) is selected,
        and the seeded sample fills the rest up to `max_images`.
    """

    split: str
    max_annotations: int
    target_area_range: tuple[float, float]
    require_single_instance: bool
    exclude_crowd_targets: bool
    max_images: int | None
    seed: int = 0
    targets_per_image: Literal["first", "all"] = "first"
    target_order: Literal["id", "file"]
    include_question_images: bool

    def __post_init__(self) -> None:
        low, high = self.target_area_range
        if not low < high:
            raise ValueError(f"SelectionSpec.target_area_range must have low < high, got {self.target_area_range}")
        if self.max_annotations < 1:
            raise ValueError(f"SelectionSpec.max_annotations must be >= 1, got {self.max_annotations}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"SelectionSpec.max_images must be >= 1 or None, got {self.max_images}")
        if self.targets_per_image not in ("first", "all"):
            raise ValueError(f"SelectionSpec.targets_per_image must be 'first' or 'all', "
                             f"got {self.targets_per_image!r}")
        if self.target_order not in ("id", "file"):
            raise ValueError(f"SelectionSpec.target_order must be 'id' or 'file', got {self.target_order!r}")


def qualifying_targets(dataset: CocoDataset, image_id: int, spec: SelectionSpec) -> list[dict[str, Any]]:
    """Annotations of `image_id` that may be its target under `spec`, in `spec.target_order`
    (annotation id, or the file's order)."""
    anns = dataset.annotations_of(image_id)
    if not anns or len(anns) > spec.max_annotations:
        return []
    low, high = spec.target_area_range
    per_category: dict[int, int] = {}
    for ann in anns:
        per_category[ann["category_id"]] = per_category.get(ann["category_id"], 0) + 1
    targets = [
        ann for ann in anns
        if low < ann["area"] < high
        and not (spec.exclude_crowd_targets and ann.get("iscrowd", 0))
        and not (spec.require_single_instance and per_category[ann["category_id"]] != 1)
    ]
    if spec.target_order == "file":
        order = dataset.annotation_order(image_id)
        targets.sort(key=lambda ann: order[ann["id"]])
    return targets


def select_targets(dataset: CocoDataset, spec: SelectionSpec, required_image_ids: Iterable[int] = ()) -> pd.DataFrame:
    """Images and their target object under `spec`, one row per image (or per target, see spec).

    `required_image_ids`: images kept whenever they qualify, before the seeded sample fills the
    rest up to `max_images` (`spec.include_question_images`; given without it, an error).
    Columns: TARGET_COLUMNS (bbox split into bbox_x, bbox_y, bbox_w, bbox_h in COCO's xywh).
    Rows sorted by image_id, then in `spec.target_order`. Deterministic for a given file and spec.
    """
    required = {int(i) for i in required_image_ids}
    if required and not spec.include_question_images:
        raise ValueError("select_targets: required_image_ids given but SelectionSpec.include_question_images is off")
    if dataset.split != spec.split:
        raise ValueError(f"SelectionSpec.split is '{spec.split}' but the dataset was loaded "
                         f"with split '{dataset.split}' ({dataset.annotation_file})")
    qualifying = {image_id: targets for image_id in dataset.image_ids()
                  if (targets := qualifying_targets(dataset, image_id, spec))}
    kept_required = sorted(required & set(qualifying))
    if len(kept_required) < len(required):
        log.warning("select_targets: %d of the %d required images have no qualifying target in %s: %s",
                    len(required) - len(kept_required), len(required), spec.split,
                    sorted(required - set(qualifying))[:20])
    kept_ids = sorted(set(qualifying) - set(kept_required))
    room = None if spec.max_images is None else max(spec.max_images - len(kept_required), 0)
    if room is not None and len(kept_ids) > room:
        rng = np.random.default_rng(spec.seed)
        kept_ids = [int(i) for i in rng.choice(kept_ids, size=room, replace=False)] if room else []
    kept_ids = sorted([*kept_required, *kept_ids])
    rows = []
    for image_id in kept_ids:
        targets = qualifying[image_id]
        info = dataset.image_info(image_id)
        n_annotations = len(dataset.annotations_of(image_id))
        for ann in (targets[:1] if spec.targets_per_image == "first" else targets):
            x, y, w, h = (float(v) for v in ann["bbox"])
            rows.append({
                "image_id": image_id, "file_name": info["file_name"],
                "width": int(info["width"]), "height": int(info["height"]),
                "annotation_id": ann["id"], "category_id": ann["category_id"],
                "category_name": dataset.category_name(ann["category_id"]),
                "area": float(ann["area"]), "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
                "n_annotations": n_annotations, "n_qualifying": len(targets),
            })
    table = pd.DataFrame(rows, columns=list(TARGET_COLUMNS))
    if len(table):
        log.info("select_targets: %d of %d images have more than one qualifying annotation (target_order %s)",
                 int((table.drop_duplicates("image_id")["n_qualifying"] > 1).sum()), table["image_id"].nunique(),
                 spec.target_order)
    return table.astype({c: "int64" for c in INTEGER_TARGET_COLUMNS}
                        | {c: "float64" for c in FLOAT_TARGET_COLUMNS})
