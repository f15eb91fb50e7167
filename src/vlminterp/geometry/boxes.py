"""Exact boxes in original-image pixels and the exact area of a mask inside them.

    from vlminterp.geometry.boxes import PixelBoxes, even_edges, mask_tokens

    boxes = PixelBoxes.grid(even_edges(0, 640, 24), even_edges(0, 480, 24))   # row-major, exact
    covered, area = mask_coverage(mask, boxes)          # exact integers per box
    overlap, selected = mask_tokens(mask, boxes, min_overlap=0.0)   # fraction (float once), exact test

Pixel (row i, column j) is the unit square [j, j+1) x [i, i+1); so (0, 0, W, H) is the whole
image. Inverting a resize, crop or padding makes box edges rational (e.g. 14 * 640 / 336), so
`PixelBoxes` keep integer numerators over one integer scale per axis, never floats. A box's overlap is (area of the mask pixels' squares inside it) / (its area), computed in
integers and rounded to float once; a box holds the object exactly when a mask pixel's square
meets it in a positive area (no 1e-16 residue makes a far cell an object cell). Float boxes are
accepted too, each edge taken at its exact binary value; `uniform_cell_boxes` tiles a rectangle
into such a grid.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import numpy as np

Rational = int | Fraction | float  # a box edge; a float stands for its exact binary value


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
    """Boxes with exact rational edges in ORIGINAL-image pixels (no float residue).

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


