"""The synthetic "shapes world": a COCO-format dataset of coloured shapes, generated offline.

Every image holds a few flat-coloured shapes (circle, square, ...) on a grey background. Objects
sit on a cell grid whose cells match the vision patch size, so an object covers whole patches and
its mask maps cleanly onto image tokens. Annotations follow COCO exactly (instances with polygon
or RLE segmentation, captions), plus an ``attributes: {"color": ...}`` field per object, so the
same data code reads COCO and this world.

    from vlminterp.data.shapes import ShapesWorldSpec, generate_world
    generate_world(ShapesWorldSpec(seed=0, n_train=4000, n_val=500), Path("data/shapes"))
    # -> data/shapes/images/{train,val}/000001.png
    #    data/shapes/annotations/{instances,captions}_{train,val}.json
    #    data/shapes/world.json   (the spec, for provenance and for the model organism)

Generation is deterministic: the same spec gives byte-identical files. Each image draws from its
own random stream (seed, split, index), so changing ``n_train`` leaves the val images unchanged.
A pixel of an object's colour belongs to that object's mask and nothing else: backgrounds are
grey (R = G = B) and palette colours are not, and masks are rasterised by pycocotools itself from
the stored polygon, so ``COCO.annToMask`` reproduces the painted pixels exactly.
"""
from __future__ import annotations

import dataclasses
import io as _io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from vlminterp.io import atomic_path, write_json
from vlminterp.specs import check_fields, configured

SPLITS: tuple[str, ...] = ("train", "val")
_SPLIT_STREAM = {"train": 0, "val": 1}

#: RGB values of every colour the world can use. None is grey (R = G = B), which keeps object
#: pixels distinguishable from any background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (240, 120, 190),
    "brown": (130, 80, 35),
}


def _regular_polygon(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
    return [
        (0.5 + radius * math.cos(phase + 2 * math.pi * k / n), 0.5 + radius * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    vertices = []
    for k in range(2 * points):
        radius = outer if k % 2 == 0 else inner
        angle = -math.pi / 2 + math.pi * k / points
        vertices.append((0.5 + radius * math.cos(angle), 0.5 + radius * math.sin(angle)))
    return vertices


_ARM = 0.18  # half-width of the cross's arms
#: Outline of every shape as a polygon in the unit square (x right, y down).
SHAPE_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "circle": _regular_polygon(32, 0.5, 0.0),
    "square": [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)],
    "triangle": [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)],
    "diamond": [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
    "cross": [
        (0.5 - _ARM, 0.0), (0.5 + _ARM, 0.0), (0.5 + _ARM, 0.5 - _ARM), (1.0, 0.5 - _ARM),
        (1.0, 0.5 + _ARM), (0.5 + _ARM, 0.5 + _ARM), (0.5 + _ARM, 1.0), (0.5 - _ARM, 1.0),
        (0.5 - _ARM, 0.5 + _ARM), (0.0, 0.5 + _ARM), (0.0, 0.5 - _ARM), (0.5 - _ARM, 0.5 - _ARM),
    ],
    "star": _star(5, 0.5, 0.22),
    "hexagon": _regular_polygon(6, 0.5, 0.0),
}

BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "stripes")


@dataclass(frozen=True)
@configured("dataset.shapes")
class ShapesWorldSpec:
    """Everything that defines a shapes world: config section dataset.shapes (types, defaults,
    meanings: workflow/schemas/config.schema.yaml). seed: master seed; the same spec always yields
    byte-identical files. Shapes and colours are keys of ``SHAPE_OUTLINES`` and ``PALETTE``."""

    seed: int = 0
    image_size: int
    cell_size: int
    n_train: int
    n_val: int
    min_objects: int
    max_objects: int
    shapes: tuple[str, ...]
    colors: tuple[str, ...]
    min_object_cells: int
    max_object_cells: int
    margin: int
    background: str
    background_level: int
    background_amplitude: int
    allow_overlap: bool
    rle_fraction: float
    unique_colors: bool
    unique_shapes: bool

    def __post_init__(self) -> None:
        # Tuples keep the spec hashable and comparable even when built from JSON lists.
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "colors", tuple(self.colors))
        self.validate()

    @classmethod
    def tiny(cls, **overrides: Any) -> "ShapesWorldSpec":
        """A small world for tests: 64x64 images (4x4 cells of 16 px), a few hundred images."""
        values: dict[str, Any] = dict(image_size=64, n_train=600, n_val=60, shapes=("circle", "square", "triangle", "cross"),
                                      colors=("red", "green", "blue", "yellow"))
        values.update(overrides)
        return cls(**values)

    @property
    def grid(self) -> int:
        """Number of cells along each side of the image."""
        return self.image_size // self.cell_size

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        def fail(name: str, message: str) -> None:
            raise ValueError(f"ShapesWorldSpec.{name}={getattr(self, name)!r}: {message}")

        if self.image_size <= 0:
            fail("image_size", "must be positive")
        if self.cell_size <= 0 or self.image_size % self.cell_size:
            fail("cell_size", f"must be positive and divide image_size={self.image_size}")
        for name in ("n_train", "n_val"):
            if getattr(self, name) < 0:
                fail(name, "must be >= 0")
        if self.min_objects < 1:
            fail("min_objects", "must be >= 1")
        if self.max_objects < self.min_objects:
            fail("max_objects", f"must be >= min_objects={self.min_objects}")
        if not self.shapes:
            fail("shapes", "needs at least one shape")
        unknown = [s for s in self.shapes if s not in SHAPE_OUTLINES]
        if unknown:
            fail("shapes", f"unknown shapes {unknown}; known: {sorted(SHAPE_OUTLINES)}")
        if not self.colors:
            fail("colors", "needs at least one colour")
        unknown = [c for c in self.colors if c not in PALETTE]
        if unknown:
            fail("colors", f"unknown colours {unknown}; known: {sorted(PALETTE)}")
        for name in ("shapes", "colors"):
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                fail(name, "contains duplicates")
        if self.unique_shapes and self.max_objects > len(self.shapes):
            fail("max_objects", f"exceeds the {len(self.shapes)} shapes while unique_shapes=True")
        if self.unique_colors and self.max_objects > len(self.colors):
            fail("max_objects", f"exceeds the {len(self.colors)} colours while unique_colors=True")
        if self.min_object_cells < 1:
            fail("min_object_cells", "must be >= 1")
        if self.max_object_cells < self.min_object_cells:
            fail("max_object_cells", f"must be >= min_object_cells={self.min_object_cells}")
        if self.max_object_cells > self.grid:
            fail("max_object_cells", f"objects would not fit the {self.grid}x{self.grid} grid")
        if not self.allow_overlap and self.max_objects > (self.grid // self.max_object_cells) ** 2:
            fail("max_objects", f"{self.max_objects} objects of up to {self.max_object_cells}x{self.max_object_cells} "
                 f"cells are not guaranteed to fit without overlap on a {self.grid}x{self.grid} grid")
        if self.margin < 0 or 2 * self.margin >= self.min_object_cells * self.cell_size - 2:
            fail("margin", "must be >= 0 and leave at least 3 pixels for the smallest object")
        if self.background not in BACKGROUNDS:
            fail("background", f"must be one of {BACKGROUNDS}")
        if not 0 <= self.background_amplitude <= self.background_level <= 255 - self.background_amplitude:
            fail("background_amplitude", "grey levels must stay in 0..255")
        if not 0.0 <= self.rle_fraction <= 1.0:
            fail("rle_fraction", "must be in [0, 1]")

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "ShapesWorldSpec":
        check_fields(cls, values)
        return cls(**values)


@dataclass
class PlacedObject:
    """One object of one image: what it is, where its box is, and its visible mask."""

    shape: str
    color: str
    box_cells: tuple[int, int, int]  # (row, col, side) in cells
    mask: np.ndarray = field(repr=False)  # H x W bool, visible pixels
    polygon: list[float]  # flattened x0, y0, x1, y1, ... in pixels
    as_rle: bool


def load_world_spec(world_dir: Path) -> ShapesWorldSpec:
    """Read the spec a world was generated from (``world.json``)."""
    path = Path(world_dir) / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {world_dir} a directory written by generate_world?")
    return ShapesWorldSpec.from_json(json.loads(path.read_text()))


def generate_world(spec: ShapesWorldSpec, out_dir: Path) -> None:
    """Write the images, instance annotations and captions of every split under ``out_dir``."""
    spec.validate()
    out_dir = Path(out_dir)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(spec.shapes)]
    category_ids = {c["name"]: c["id"] for c in categories}
    info = {"description": "vlminterp synthetic shapes world", "version": "1.0", "year": 2024,
            "contributor": "vlminterp", "seed": spec.seed}
    for split in SPLITS:
        n_images = spec.n_train if split == "train" else spec.n_val
        images, instances, captions = [], [], []
        for index in range(n_images):
            image_id = index + 1
            file_name = f"{image_id:06d}.png"
            pixels, objects = render_image(spec, split, index)
            _write_png(pixels, out_dir / "images" / split / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": spec.image_size,
                           "height": spec.image_size})
            for obj in objects:
                instances.append(_annotation(obj, len(instances) + 1, image_id, category_ids[obj.shape]))
            for caption in describe_objects_as_captions([(o.color, o.shape) for o in objects]):
                captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": caption})
        write_json({"info": info, "licenses": [], "images": images, "categories": categories,
                    "annotations": instances}, out_dir / "annotations" / f"instances_{split}.json")
        write_json({"info": info, "licenses": [], "images": images, "annotations": captions},
                   out_dir / "annotations" / f"captions_{split}.json")
    write_json(spec.to_json(), out_dir / "world.json")


def render_image(spec: ShapesWorldSpec, split: str, index: int) -> tuple[np.ndarray, list[PlacedObject]]:
    """Draw image ``index`` of ``split``: (H x W x 3 uint8 pixels, objects in reading order)."""
    rng = np.random.default_rng([spec.seed, _SPLIT_STREAM[split], index])
    size = spec.image_size
    pixels = _background(spec, rng)
    n_objects = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    shapes = _draw_categories(rng, spec.shapes, n_objects, spec.unique_shapes)
    colors = _draw_categories(rng, spec.colors, n_objects, spec.unique_colors)
    boxes = _place_boxes(spec, rng, n_objects)
    painted = np.zeros((size, size), dtype=np.int32)  # 1-based index of the object owning a pixel
    objects: list[PlacedObject] = []
    for k, (shape, color, box) in enumerate(zip(shapes, colors, boxes)):
        polygon = _shape_polygon(spec, shape, box)
        mask = polygon_mask(polygon, size, size)
        pixels[mask] = PALETTE[color]
        painted[mask] = k + 1
        objects.append(PlacedObject(shape, color, box, mask, polygon, as_rle=bool(rng.random() < spec.rle_fraction)))
    visible = []
    for k, obj in enumerate(objects):
        visible_mask = painted == k + 1
        if not visible_mask.any():
            continue  # fully occluded (only possible with allow_overlap)
        if not np.array_equal(visible_mask, obj.mask):
            obj.as_rle = True  # an occluded outline is no longer the polygon
        obj.mask = visible_mask
        visible.append(obj)
    visible.sort(key=lambda o: (o.box_cells[0], o.box_cells[1]))
    return pixels, visible


def polygon_mask(polygon: list[float], height: int, width: int) -> np.ndarray:
    """Rasterise one flattened polygon exactly as pycocotools' ``annToMask`` does."""
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
    return mask_utils.decode(rle).astype(bool)


def mask_to_uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (as in crowd annotations): run lengths in column-major order."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts  # COCO RLE always starts with a run of zeros
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def describe_objects_as_captions(objects: list[tuple[str, str]]) -> list[str]:
    """COCO-style captions naming every (color, shape) object, in the given (reading) order."""
    phrases = [f"{article(color)} {color} {shape}" for color, shape in objects]
    count_words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    count = count_words.get(len(objects), str(len(objects)))
    noun = "shape" if len(objects) == 1 else "shapes"
    return [join_phrases(phrases) + ".", f"{count} {noun} on a grey background: {join_phrases(phrases)}."]


def article(word: str) -> str:
    """The English indefinite article for ``word`` ("an orange", "a red")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def join_phrases(phrases: list[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _annotation(obj: PlacedObject, annotation_id: int, image_id: int, category_id: int) -> dict[str, Any]:
    if obj.as_rle:
        segmentation: Any = mask_to_uncompressed_rle(obj.mask)
    else:
        segmentation = [[round(v, 2) for v in obj.polygon]]
    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id,
            "segmentation": segmentation, "area": int(obj.mask.sum()), "bbox": bbox,
            "iscrowd": int(obj.as_rle), "attributes": {"color": obj.color}}


def _background(spec: ShapesWorldSpec, rng: np.random.Generator) -> np.ndarray:
    size, level, amp = spec.image_size, spec.background_level, spec.background_amplitude
    if spec.background == "plain":
        grey = np.full((size, size), level, dtype=np.int32)
    elif spec.background == "noise":
        grey = rng.integers(level - amp, level + amp + 1, size=(size, size))
    else:  # stripes: diagonal bands of random width and phase
        period = int(rng.integers(6, 13))
        phase = int(rng.integers(0, period))
        yy, xx = np.mgrid[0:size, 0:size]
        grey = np.where(((xx + yy + phase) // (period // 2 or 1)) % 2 == 0, level - amp, level + amp)
    return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)


def _draw_categories(rng: np.random.Generator, options: tuple[str, ...], n: int, unique: bool) -> list[str]:
    picks = rng.choice(len(options), size=n, replace=not unique)
    return [options[int(i)] for i in picks]


def _place_boxes(spec: ShapesWorldSpec, rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
    """Random cell-aligned square boxes; disjoint unless ``allow_overlap``.

    Boxes are placed one by one at uniformly drawn free positions; if a partial placement leaves
    no room, it restarts (a few times), then falls back to drawing from a tiling of the grid by
    the largest box, which ``validate`` guarantees has room for ``max_objects``.
    """
    sides = [int(rng.integers(spec.min_object_cells, spec.max_object_cells + 1)) for _ in range(n)]
    if spec.allow_overlap:
        return [(int(rng.integers(spec.grid - s + 1)), int(rng.integers(spec.grid - s + 1)), s) for s in sides]
    for _ in range(20):
        occupied = np.zeros((spec.grid, spec.grid), dtype=bool)
        boxes: list[tuple[int, int, int]] = []
        for side in sides:
            free = [(r, c) for r in range(spec.grid - side + 1) for c in range(spec.grid - side + 1)
                    if not occupied[r:r + side, c:c + side].any()]
            if not free:
                break
            row, col = free[int(rng.integers(len(free)))]
            occupied[row:row + side, col:col + side] = True
            boxes.append((row, col, side))
        else:
            return boxes
    tile = spec.max_object_cells
    tiles = [(r * tile, c * tile) for r in range(spec.grid // tile) for c in range(spec.grid // tile)]
    picks = rng.choice(len(tiles), size=n, replace=False)
    return [(tiles[int(i)][0], tiles[int(i)][1], side) for i, side in zip(picks, sides)]


def _shape_polygon(spec: ShapesWorldSpec, shape: str, box: tuple[int, int, int]) -> list[float]:
    row, col, side = box
    x0 = col * spec.cell_size + spec.margin
    y0 = row * spec.cell_size + spec.margin
    extent = side * spec.cell_size - 2 * spec.margin
    polygon: list[float] = []
    for u, v in SHAPE_OUTLINES[shape]:
        polygon += [round(x0 + u * extent, 2), round(y0 + v * extent, 2)]
    return polygon


def _write_png(pixels: np.ndarray, path: Path) -> None:
    buffer = _io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
