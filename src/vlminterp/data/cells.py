"""Object masks to image-token cells: exact fractional overlap, dilation, token positions.

    from vlminterp.data.cells import cell_overlap, object_cells, dilate_cells, cells_to_positions

    overlap = cell_overlap(mask, cell_boxes)            # (rows, cols) fraction of each cell covered, exact
    obj = object_cells(overlap, min_overlap=0.0)        # any overlap, as the original N1 code
    obj_b1 = dilate_cells(obj, buffer=1)                # 8-neighbourhood dilation, once
    positions = cells_to_positions(obj_b1, image_token_positions)   # sequence positions
    rand = matched_random_cells(obj, rng=np.random.default_rng(0))  # same count, off the object

Geometry (exact: design habit 11). The model adapter gives, for each image-token cell, the box
[x0, x1) x [y0, y1) it covers in the ORIGINAL image, in continuous pixel coordinates where pixel
(row i, column j) is the unit square [j, j+1) x [i, i+1); so (0, 0, W, H) is the whole image.
Inverting a resize, crop or padding makes the edges rational (e.g. 14 * 640 / 336), so the boxes
are `PixelBoxes`: integer numerators over one integer scale per axis, never floats. A cell's
overlap is (area of the mask pixels' squares inside its box) / (box area), computed in integers
(`mask_coverage`) and rounded to float once; a cell holds the object exactly when a mask pixel's
square meets its box in a positive area (no 1e-16 residue makes a far cell an object cell).
What the model never sees is in no box: under a centre crop the cut-away parts; under padding a
cell's box is clipped to the image, and a cell wholly in the padding has no box (overlap 0).
Float boxes (rows, cols, 4) are accepted too (`cell_overlap`, tests), each edge taken at its exact
binary value; `uniform_cell_boxes` tiles a rectangle into such a grid. Cells are ordered
row-major, as LLaVA orders its image tokens.

Tiled and dynamic-grid families. An image of InternVL becomes several tiles (+ a thumbnail),
one of Qwen2-VL a grid whose shape depends on the image; the adapter describes every image token
by an `ImageCells` table (`adapter.image_cells(original_size, geometry)`: tile, row, col, box).
The token-level functions below work on any such *token layout* (an object with `tile`, `row`,
`col` (N,) arrays and `tile_shapes`; `ImageCells` and the experiments' per-image cell tables
both are one) and on (N,) bool token sets in image-token order:

    overlap, base = mask_tokens(mask, image_cells.pixel_boxes, min_overlap=0.0)   # exact, per token box
    reason = exclusion_reason(mask, overlap, base)        # "" or why no token holds the object
    obj_b1 = dilate_tokens(image_cells, base, buffer=1)   # 8-neighbourhood within each tile
    distance = token_distance(image_cells, base)          # Chebyshev, within each tile (inf: none there)
    last = last_row_tokens(image_cells)                   # last row of the last tile (next to the text)

Neighbourhoods never cross tiles: two tokens of different tiles are never neighbours, whatever
their boxes (InternVL's thumbnail is a tile of its own, overlapping the high-resolution tiles).
For a single-grid family (LLaVA: one tile, row-major) these equal the grid functions exactly.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterator, Literal, Protocol, Sequence

import numpy as np

RngLike = np.random.Generator | int
Rational = int | Fraction | float  # a box edge; a float stands for its exact binary value


class TokenLayout(Protocol):
    """Where each image token of one image sits: tile, row and column (N,) int arrays, in
    image-token order, and each tile's (rows, cols). `ImageCells` of the adapters is one."""

    tile: np.ndarray
    row: np.ndarray
    col: np.ndarray
    tile_shapes: tuple[tuple[int, int], ...]


class TokenLayoutSizes:
    """`num_tokens` and `num_tiles` of a token layout (mixed into `ImageCells` and the experiments'
    per-image cell tables)."""

    tile: np.ndarray
    tile_shapes: tuple[tuple[int, int], ...]

    @property
    def num_tokens(self) -> int:
        return len(self.tile)

    @property
    def num_tiles(self) -> int:
        return len(self.tile_shapes)


def uniform_cell_boxes(region: Sequence[float], rows: int, cols: int) -> np.ndarray:
    """Split `region` (x0, y0, x1, y1) into a rows x cols grid of equal boxes, shape (rows, cols, 4).

    E.g. a centre crop of a W x H image (W > H) covers ((W - H) / 2, 0, (W + H) / 2, H); padding
    it to a square covers (0, (H - W) / 2, W, (H + W) / 2).
    """
    x0, y0, x1, y1 = (float(v) for v in region)
    if not (x1 > x0 and y1 > y0) or rows < 1 or cols < 1:
        raise ValueError(f"need x1 > x0, y1 > y0 and a positive grid, got region {tuple(region)}, "
                         f"grid {rows}x{cols}")
    xs = np.linspace(x0, x1, cols + 1)
    ys = np.linspace(y0, y1, rows + 1)
    boxes = np.empty((rows, cols, 4), dtype=np.float64)
    boxes[..., 0] = xs[None, :-1]
    boxes[..., 1] = ys[:-1, None]
    boxes[..., 2] = xs[None, 1:]
    boxes[..., 3] = ys[1:, None]
    return boxes


class PixelBoxes:
    """Boxes with exact rational edges in ORIGINAL-image pixels (design habit 11: no float residue).

    Box k is [x0, x1) x [y0, y1) with x = numerators[k, 0 or 2] / scale[0] and y = numerators[k, 1
    or 3] / scale[1]: integer numerators (N, 4) over one integer scale per axis (the least common
    denominator of every edge). Pixel (row i, column j) is the unit square [j, j+1) x [i, i+1).
    A box with no area (x1 <= x0 or y1 <= y0) is "no box": a cell lying wholly in the padding of
    the "pad" geometry; it covers no pixel and `as_float` gives it a row of NaN.

        boxes = PixelBoxes.grid(even_edges(0, 640, 24), even_edges(0, 480, 24))   # row-major
        boxes.as_float()                                                        # (N, 4) float64
    """

    def __init__(self, numerators: np.ndarray, scale: tuple[int, int]):
        numerators = np.asarray(numerators)
        if numerators.ndim != 2 or numerators.shape[1] != 4:
            raise ValueError(f"box numerators must have shape (N, 4), got {numerators.shape}")
        if int(scale[0]) < 1 or int(scale[1]) < 1:
            raise ValueError(f"box scales must be positive integers, got {scale}")
        self.numerators = numerators
        self.scale = (int(scale[0]), int(scale[1]))

    @classmethod
    def from_edges(cls, boxes: Sequence[Sequence[Rational]]) -> "PixelBoxes":
        """From (x0, y0, x1, y1) per box: ints, Fractions or floats (a float is taken at its exact
        binary value, so pass Fractions for edges such as 640 / 3)."""
        exact = [[Fraction(v) for v in box] for box in boxes]
        if any(len(box) != 4 for box in exact):
            raise ValueError("every box needs four edges (x0, y0, x1, y1)")
        scale_x = math.lcm(1, *(v.denominator for box in exact for v in box[0::2]))
        scale_y = math.lcm(1, *(v.denominator for box in exact for v in box[1::2]))
        numbers = [[int(v * s) for v, s in zip(box, (scale_x, scale_y, scale_x, scale_y))] for box in exact]
        return cls(_exact_integers(np.array(numbers, dtype=object).reshape(-1, 4)), (scale_x, scale_y))

    @classmethod
    def from_float(cls, boxes: np.ndarray) -> "PixelBoxes":
        """From float boxes (N, 4), each edge at its exact binary value; a row of NaN is "no box".
        Every other box needs x1 > x0 and y1 > y0."""
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
        empty = np.isnan(boxes).any(axis=1)
        kept = boxes[~empty]
        if not np.isfinite(kept).all() or not np.all((kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])):
            raise ValueError("every cell box needs finite edges with x1 > x0 and y1 > y0 (or a row of NaN: no box)")
        return cls.from_edges([(0, 0, 0, 0) if no_box else tuple(float(v) for v in box)
                               for box, no_box in zip(boxes, empty)])

    @classmethod
    def grid(cls, x_edges: Sequence[Rational], y_edges: Sequence[Rational]) -> "PixelBoxes":
        """The (len(y_edges) - 1) x (len(x_edges) - 1) grid of boxes between the edges, row-major."""
        axes = []
        for edges in (x_edges, y_edges):
            exact = [Fraction(v) for v in edges]
            scale = math.lcm(1, *(v.denominator for v in exact))
            axes.append((np.array([int(v * scale) for v in exact], dtype=object), scale))
        (xs, scale_x), (ys, scale_y) = axes
        rows, cols = np.divmod(np.arange((len(ys) - 1) * (len(xs) - 1)), len(xs) - 1)
        numbers = np.stack([xs[cols], ys[rows], xs[cols + 1], ys[rows + 1]], axis=1)
        return cls(_exact_integers(numbers), (scale_x, scale_y))

    @classmethod
    def concatenate(cls, parts: Sequence["PixelBoxes"]) -> "PixelBoxes":
        """The boxes of every part, in order, over a common scale."""
        scale_x = math.lcm(*(p.scale[0] for p in parts))
        scale_y = math.lcm(*(p.scale[1] for p in parts))
        numbers = [p.numerators.astype(object) * np.array([scale_x // p.scale[0], scale_y // p.scale[1]] * 2,
                                                          dtype=object) for p in parts]
        return cls(_exact_integers(np.concatenate(numbers)), (scale_x, scale_y))

    def __len__(self) -> int:
        return len(self.numerators)

    def __getitem__(self, index) -> "PixelBoxes":
        return PixelBoxes(self.numerators[index].reshape(-1, 4), self.scale)

    @property
    def shown(self) -> np.ndarray:
        """(N,) bool: the box has an area (False: no box, a cell wholly in padding)."""
        n = self.numerators
        return (n[:, 2] > n[:, 0]) & (n[:, 3] > n[:, 1])

    def edges(self, k: int) -> tuple[Fraction, Fraction, Fraction, Fraction]:
        """Box k's (x0, y0, x1, y1) as exact fractions."""
        sx, sy = self.scale
        return tuple(Fraction(int(v), s) for v, s in zip(self.numerators[k], (sx, sy, sx, sy)))

    def as_float(self) -> np.ndarray:
        """(N, 4) float64 boxes (each edge the float nearest its exact value); NaN rows: no box."""
        sx, sy = self.scale
        scales = np.array([sx, sy, sx, sy])
        if self.numerators.dtype != object and np.abs(self.numerators).max(initial=0) < 2**53 and max(sx, sy) < 2**53:
            out = self.numerators.astype(np.float64) / scales  # both exact in float64: one rounding
        else:
            out = np.array([[int(v) / int(s) for v, s in zip(box, scales)] for box in self.numerators],
                           dtype=np.float64).reshape(-1, 4)
        out[~self.shown] = np.nan
        return out


def even_edges(start: Rational, stop: Rational, n: int) -> list[Fraction]:
    """n + 1 exact edges splitting [start, stop] into n equal parts."""
    start, stop = Fraction(start), Fraction(stop)
    return [start + (stop - start) * k / n for k in range(n + 1)]


def _exact_integers(values: np.ndarray) -> np.ndarray:
    """int64 when every value fits with room to spare, else an object array of Python ints."""
    values = np.asarray(values, dtype=object)
    largest = int(np.abs(values).max()) if values.size else 0
    return values.astype(np.int64) if largest < 2**62 else values


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D (H, W) array, got shape {mask.shape}")
    return mask.astype(bool)


def _summed_area_table(mask: np.ndarray) -> np.ndarray:
    """table[i, j] = number of mask pixels in rows < i and columns < j; shape (H + 1, W + 1), int64."""
    height, width = mask.shape
    table = np.zeros((height + 1, width + 1), dtype=np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(axis=0).cumsum(axis=1)
    return table


def _scaled_area_up_to(table: np.ndarray, x: np.ndarray, y: np.ndarray, scale: tuple[int, int]) -> np.ndarray:
    """Mask area inside [0, x / sx] x [0, y / sy] times sx * sy, exactly (x, y integer numerators,
    clipped to the image).

    Within one pixel that area is bilinear in (x, y) and equals the table at pixel corners, so it
    is the bilinear interpolation of the summed-area table, done here in integers.
    """
    sx, sy = scale
    height, width = table.shape[0] - 1, table.shape[1] - 1
    x = np.minimum(np.maximum(x, 0), width * sx)
    y = np.minimum(np.maximum(y, 0), height * sy)
    j = np.minimum(x // sx, width - 1).astype(np.int64)
    i = np.minimum(y // sy, height - 1).astype(np.int64)
    fx, fy = x - j * sx, y - i * sy
    return (table[i, j] * (sx - fx) * (sy - fy) + table[i, j + 1] * fx * (sy - fy)
            + table[i + 1, j] * (sx - fx) * fy + table[i + 1, j + 1] * fx * fy)


def mask_coverage(mask: np.ndarray, boxes: PixelBoxes) -> tuple[np.ndarray, np.ndarray]:
    """(covered, area), exact integers (N,) in units of 1 / (sx * sy) square pixels.

    covered = the area of the mask pixels' unit squares inside each box; area = the box's area
    (0 for no box). A box reaching outside the image keeps its whole area (the outside is
    background). covered > 0 exactly when some mask pixel's square meets the box in a positive area.
    """
    mask = _as_mask(mask)
    sx, sy = boxes.scale
    numbers = boxes.numerators
    shown = boxes.shown
    zero = numbers[:, 0] * 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return zero, np.where(shown, (numbers[:, 2] - numbers[:, 0]) * (numbers[:, 3] - numbers[:, 1]), zero)
    # Only the mask's bounding box matters: work there, boxes shifted by its corner (exactly).
    mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    numbers = numbers - np.array([cols[0] * sx, rows[0] * sy] * 2, dtype=numbers.dtype)
    table = _summed_area_table(mask)
    largest = 2 * int(np.abs(numbers).max(initial=0)) + 1
    bound = max(int(table[-1, -1]) * sx * sy + (mask.shape[1] * sx + 1) * (mask.shape[0] * sy + 1), largest * largest)
    if numbers.dtype != object and bound >= 2**62:
        numbers = numbers.astype(object)
    if numbers.dtype == object:
        table = table.astype(object)
    x0, y0, x1, y1 = (numbers[:, k] for k in range(4))
    covered = (_scaled_area_up_to(table, x1, y1, boxes.scale) - _scaled_area_up_to(table, x0, y1, boxes.scale)
               - _scaled_area_up_to(table, x1, y0, boxes.scale) + _scaled_area_up_to(table, x0, y0, boxes.scale))
    return np.where(shown, covered, zero), np.where(shown, (x1 - x0) * (y1 - y0), zero)


def as_pixel_boxes(boxes) -> PixelBoxes:
    """`PixelBoxes` as they are; float (N, 4) boxes (NaN rows: no box) at their exact binary values."""
    return boxes if isinstance(boxes, PixelBoxes) else PixelBoxes.from_float(boxes)


def cell_box_grid(boxes: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """An adapter's flat (rows * cols, 4) cell boxes, in image-token order, as a (rows, cols, 4) grid.

    Rows of NaN (cells lying wholly in the padding of the "pad" geometry) are kept: `cell_overlap`
    gives such cells zero overlap.
    """
    flat = np.asarray(boxes, dtype=np.float64)
    if flat.shape != (rows * cols, 4):
        raise ValueError(f"expected ({rows * cols}, 4) boxes for a {rows}x{cols} grid, got {flat.shape}")
    return flat.reshape(rows, cols, 4)


def cell_overlap(mask: np.ndarray, cell_boxes: np.ndarray) -> np.ndarray:
    """Fraction of each cell's box covered by `mask`, shape (rows, cols), values in [0, 1].

    `cell_boxes` (rows, cols, 4) floats, each edge taken at its exact binary value (for boxes from
    a model's geometry use `mask_tokens` with the adapter's exact `PixelBoxes`). The fraction is
    exact (`mask_coverage`) and rounded once to float: exactly 0.0 where no mask pixel lies in
    the box. The denominator is the whole box area, so parts of a box outside the image are
    background. A box of NaN (a cell wholly in the padding, see `cell_box_grid`) has overlap 0.
    """
    boxes = np.asarray(cell_boxes, dtype=np.float64)
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"cell_boxes must have shape (rows, cols, 4), got {boxes.shape}")
    return mask_tokens(mask, boxes.reshape(-1, 4))[0].reshape(boxes.shape[:2])


def object_cells(overlap: np.ndarray, min_overlap: float = 0.0) -> np.ndarray:
    """Cells whose covered fraction is strictly greater than `min_overlap` (0.0 = any overlap: exact,
    since a cell holding no mask pixel has overlap exactly 0.0). For a positive threshold on a
    model's cells prefer `mask_tokens`, which compares the exact fractions."""
    if not 0.0 <= min_overlap < 1.0:
        raise ValueError(f"min_overlap must be in [0, 1), got {min_overlap}")
    return np.asarray(overlap) > min_overlap


def _as_grid(cells: np.ndarray) -> np.ndarray:
    grid = np.asarray(cells)
    if grid.ndim != 2 or grid.dtype != bool:
        raise ValueError(f"cells must be a 2-D bool (rows, cols) grid, got {grid.dtype} {grid.shape}")
    return grid


def dilate_cells(cells: np.ndarray, buffer: int) -> np.ndarray:
    """Dilate a cell set `buffer` times with the 8-neighbourhood (3 x 3), clipped to the grid."""
    grid = _as_grid(cells).copy()
    if buffer < 0:
        raise ValueError(f"buffer must be >= 0, got {buffer}")
    rows, cols = grid.shape
    for _ in range(buffer):
        padded = np.pad(grid, 1, constant_values=False)
        grid = np.zeros_like(grid)
        for dr in range(3):
            for dc in range(3):
                grid |= padded[dr:dr + rows, dc:dc + cols]
    return grid


def cells_to_positions(cells: np.ndarray, image_token_positions: Sequence[int] | np.ndarray) -> np.ndarray:
    """Sequence positions of the selected cells, in image-token order (int64, 1-D).

    `image_token_positions[k]` is the sequence position of the k-th image token. `cells` is a
    (rows, cols) grid (token k covers cell (k // cols, k % cols); a (rows, cols) array of
    positions is accepted too) or an (N,) token set in image-token order (any family).
    """
    cells = np.asarray(cells)
    if cells.dtype != bool or cells.ndim not in (1, 2):
        raise ValueError(f"cells must be a 1-D token set or a 2-D (rows, cols) grid of bool, "
                         f"got {cells.dtype} {cells.shape}")
    positions = np.asarray(image_token_positions, dtype=np.int64).reshape(-1)
    if positions.size != cells.size:
        shape = "x".join(str(n) for n in cells.shape)
        raise ValueError(f"{positions.size} image token positions for {shape} = {cells.size} cells")
    return positions[cells.reshape(-1)]


def last_row_cells(shape: tuple[int, int]) -> np.ndarray:
    """The last row of image cells (the last image tokens in LLaVA's row-major order)."""
    grid = np.zeros(shape, dtype=bool)
    grid[-1, :] = True
    return grid


def background_cells(object_cells_grid: np.ndarray, buffer: int = 0) -> np.ndarray:
    """Cells outside the object; with `buffer` > 0 also outside its `buffer`-times dilation."""
    return ~dilate_cells(object_cells_grid, buffer)


def random_cells(shape: tuple[int, ...], n: int, rng: RngLike,
                 exclude: np.ndarray | None = None) -> np.ndarray:
    """`n` distinct cells drawn uniformly (without replacement) among cells not in `exclude`.

    `shape` is a grid's (rows, cols) or (N,) for a token set; the draw is over the flat
    (row-major = image-token) order, so a grid and its flattened token set give the same cells.
    `rng` is a numpy Generator (advanced by the draw) or an int seed. Raises ValueError when
    fewer than `n` cells are available.
    """
    shape = tuple(int(v) for v in shape)
    if exclude is not None:
        exclude = np.asarray(exclude)
        if exclude.shape != shape or exclude.dtype != bool:
            raise ValueError(f"exclude has shape {exclude.shape} ({exclude.dtype}), cells have shape {shape} (bool)")
    candidates = np.flatnonzero(np.ones(shape, dtype=bool) if exclude is None else ~exclude)
    if not 0 <= n <= candidates.size:
        raise ValueError(f"cannot draw {n} random cells: {candidates.size} available")
    chosen = np.random.default_rng(rng).choice(candidates, size=n, replace=False)
    grid = np.zeros(shape, dtype=bool)
    grid.reshape(-1)[chosen] = True
    return grid


def matched_random_cells(object_cells_grid: np.ndarray, rng: RngLike, *,
                         among: Literal["non_object", "all"] = "non_object",
                         buffer: int = 0) -> np.ndarray:
    """Random cells as many as the object's cells: the count-matched baseline of N1.

    among="non_object" draws off the object (and off its `buffer`-dilation), so the random set is
    disjoint from the object; among="all" draws from every cell, as a plain random-token control.
    """
    grid = _as_grid(object_cells_grid)
    if among == "non_object":
        exclude = dilate_cells(grid, buffer)
    elif among == "all":
        exclude = None
    else:
        raise ValueError(f"among must be 'non_object' or 'all', got {among!r}")
    return random_cells(grid.shape, int(grid.sum()), rng, exclude=exclude)


# ---- token sets of any family (tiles, thumbnails, dynamic grids) ---------------------------------
def mask_tokens(mask: np.ndarray, boxes, min_overlap: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(overlap (N,), selected (N,) bool) of a mask over per-token boxes in original pixels.

    `boxes`: the adapter's exact `PixelBoxes` (`ImageCells.pixel_boxes`), or float (N, 4) boxes
    (NaN rows: no box). A token's overlap is the exact fraction of its box covered by mask pixels
    (`mask_coverage`), rounded once to float; a token with no box has overlap 0. `selected` is
    decided exactly: covered / area > `min_overlap`, where min_overlap is read as the decimal it
    prints as (0.3 = 3/10). So with min_overlap 0 a token is selected exactly when a mask pixel
    lies in its box. Each token uses its own box, so tokens of a thumbnail and of a
    high-resolution tile covering the same pixels are both selected.
    """
    if not 0.0 <= min_overlap < 1.0:
        raise ValueError(f"min_overlap must be in [0, 1), got {min_overlap}")
    mask = _as_mask(mask)
    covered, area = (v.astype(object) for v in mask_coverage(mask, as_pixel_boxes(boxes)))
    shown = area > 0
    overlap = np.where(shown, covered / np.where(shown, area, 1), 0.0).astype(np.float64)  # int / int: rounded once
    threshold = Fraction(repr(float(min_overlap)))
    selected = shown & (covered * threshold.denominator > area * threshold.numerator)
    return overlap, selected.astype(bool)


# Why an object has no object token (a target of N1-N3, a mention of K3): such an object cannot be
# ablated, blocked or localized, and counting it would dilute every rate, so the experiments
# exclude it and count it under one of these reasons.
EXCLUDED_EMPTY_MASK = "empty mask"
EXCLUDED_OUTSIDE_CROP = "object outside the crop"
EXCLUDED_BELOW_MIN_OVERLAP = "no cell above min_overlap"


def exclusion_reason(mask: np.ndarray, overlap: np.ndarray, selected: np.ndarray) -> str:
    """"" when some token is selected; else why not: EXCLUDED_EMPTY_MASK (no mask pixel),
    EXCLUDED_OUTSIDE_CROP (no mask pixel in any token's box: under "crop" the object lies wholly
    in the part cut away) or EXCLUDED_BELOW_MIN_OVERLAP (`overlap`, `selected`: of `mask_tokens`)."""
    if np.asarray(selected).any():
        return ""
    if not np.asarray(mask).any():
        return EXCLUDED_EMPTY_MASK
    return EXCLUDED_BELOW_MIN_OVERLAP if (np.asarray(overlap) > 0).any() else EXCLUDED_OUTSIDE_CROP


def tile_tokens(layout: TokenLayout) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per tile: (token indices of the tile, their flat index in the tile's row-major grid).

    Checks that every tile's tokens cover its grid exactly once."""
    tile, row, col = (np.asarray(a, dtype=np.int64) for a in (layout.tile, layout.row, layout.col))
    if not tile.shape == row.shape == col.shape or tile.ndim != 1:
        raise ValueError("a token layout needs tile, row and col arrays of one length")
    if len(tile) and (tile.min() < 0 or tile.max() >= len(layout.tile_shapes)):
        raise ValueError(f"tile index outside the layout's {len(layout.tile_shapes)} tiles")
    for index, (rows, cols) in enumerate(layout.tile_shapes):
        tokens = np.flatnonzero(tile == index)
        flat = row[tokens] * cols + col[tokens]
        inside = (row[tokens] >= 0) & (row[tokens] < rows) & (col[tokens] >= 0) & (col[tokens] < cols)
        if len(tokens) != rows * cols or not inside.all() or len(np.unique(flat)) != rows * cols:
            raise ValueError(f"tile {index}: {len(tokens)} tokens do not cover its {rows}x{cols} grid exactly once")
        yield tokens, flat


def _as_tokens(layout: TokenLayout, selected: np.ndarray) -> np.ndarray:
    selected = np.asarray(selected)
    if selected.dtype != bool or selected.shape != (len(layout.tile),):
        raise ValueError(f"a token set must be (N,) bool with N = {len(layout.tile)} image tokens, "
                         f"got {selected.dtype} {selected.shape}")
    return selected


def _per_tile(layout: TokenLayout, selected: np.ndarray, grid_function, dtype) -> np.ndarray:
    """Apply a (rows, cols) -> (rows, cols) function to each tile's part of a token set."""
    selected = _as_tokens(layout, selected)
    out = np.zeros(len(selected), dtype=dtype)
    for (tokens, flat), shape in zip(tile_tokens(layout), layout.tile_shapes):
        grid = np.zeros(shape[0] * shape[1], dtype=bool)
        grid[flat] = selected[tokens]
        out[tokens] = grid_function(grid.reshape(shape)).reshape(-1)[flat]
    return out


def dilate_tokens(layout: TokenLayout, selected: np.ndarray, buffer: int) -> np.ndarray:
    """`dilate_cells` of a token set, within each tile (a tile's border stops the dilation)."""
    if buffer < 0:
        raise ValueError(f"buffer must be >= 0, got {buffer}")
    return _per_tile(layout, selected, lambda grid: dilate_cells(grid, buffer), bool)


def chebyshev_distance(cells: np.ndarray) -> np.ndarray:
    """(rows, cols) Chebyshev distance (in cells) of every cell to the nearest True cell (inf if none)."""
    grid = _as_grid(cells)
    rows, cols = np.indices(grid.shape)
    targets = np.argwhere(grid)
    if len(targets) == 0:
        return np.full(grid.shape, np.inf)
    d = np.maximum(np.abs(rows[..., None] - targets[:, 0]), np.abs(cols[..., None] - targets[:, 1]))
    return d.min(axis=-1).astype(float)


def token_distance(layout: TokenLayout, selected: np.ndarray) -> np.ndarray:
    """(N,) Chebyshev distance of each token to the nearest selected token OF ITS OWN TILE, in
    cells of that tile; inf for the tokens of a tile holding no selected token."""
    return _per_tile(layout, selected, chebyshev_distance, np.float64)


def last_row_tokens(layout: TokenLayout) -> np.ndarray:
    """(N,) bool: the last row of the last tile in token order, i.e. the image tokens just before
    the text (LLaVA: the grid's last row; InternVL: the thumbnail's, or the single tile's)."""
    last = len(layout.tile_shapes) - 1
    rows = layout.tile_shapes[last][0]
    return (np.asarray(layout.tile) == last) & (np.asarray(layout.row) == rows - 1)
