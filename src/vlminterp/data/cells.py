"""Object masks to image-token cells: exact fractional overlap, dilation, token positions.

    from vlminterp.data.cells import cell_overlap, object_cells, dilate_cells, cells_to_positions

    overlap = cell_overlap(mask, cell_boxes)            # (rows, cols) fraction of each cell covered
    obj = object_cells(overlap, min_overlap=0.0)        # any overlap, as the original N1 code
    obj_b1 = dilate_cells(obj, buffer=1)                # 8-neighbourhood dilation, once
    positions = cells_to_positions(obj_b1, image_token_positions)   # sequence positions
    rand = matched_random_cells(obj, rng=np.random.default_rng(0))  # same count, off the object

Geometry. `cell_boxes` (rows, cols, 4) comes from the model adapter: for each image-token cell the
box (x0, y0, x1, y1) it covers in the ORIGINAL image, in continuous pixel coordinates where pixel
(row i, column j) occupies [j, j+1) x [i, i+1); so (0, 0, W, H) is the whole image. Boxes may
reach outside the image (padding to a square: that part counts as background) or tile only part
of it (centre crop). Cells are ordered row-major, as LLaVA orders its image tokens.
`uniform_cell_boxes` tiles any rectangle into such a grid for adapters and tests.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

RngLike = np.random.Generator | int


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


def _summed_area_table(mask: np.ndarray) -> np.ndarray:
    """table[i, j] = number of mask pixels in rows < i and columns < j; shape (H + 1, W + 1)."""
    height, width = mask.shape
    table = np.zeros((height + 1, width + 1), dtype=np.float64)
    table[1:, 1:] = mask.astype(np.float64).cumsum(axis=0).cumsum(axis=1)
    return table


def _mask_area_up_to(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask area inside [0, x] x [0, y] for continuous x, y (clipped to the image).

    Within one pixel that area is bilinear in (x, y) and equals the table at pixel corners, so it
    is exactly the bilinear interpolation of the summed-area table.
    """
    height, width = table.shape[0] - 1, table.shape[1] - 1
    x = np.clip(x, 0.0, width)
    y = np.clip(y, 0.0, height)
    j = np.minimum(np.floor(x).astype(np.int64), width - 1)
    i = np.minimum(np.floor(y).astype(np.int64), height - 1)
    fx, fy = x - j, y - i
    return (table[i, j] * (1 - fx) * (1 - fy) + table[i, j + 1] * fx * (1 - fy)
            + table[i + 1, j] * (1 - fx) * fy + table[i + 1, j + 1] * fx * fy)


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

    Exact for fractional box edges: a pixel cut by an edge counts by the part inside the box.
    The denominator is the whole box area, so parts of a box outside the image are background.
    A box of NaN (a cell wholly in the padding, see `cell_box_grid`) has overlap 0.
    """
    mask = np.asarray(mask)
    boxes = np.asarray(cell_boxes, dtype=np.float64)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D (H, W) array, got shape {mask.shape}")
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"cell_boxes must have shape (rows, cols, 4), got {boxes.shape}")
    padding = np.isnan(boxes).any(axis=-1)
    boxes = np.where(padding[..., None], np.array([0.0, 0.0, 1.0, 1.0]), boxes)
    x0, y0, x1, y1 = np.moveaxis(boxes, -1, 0)
    box_area = (x1 - x0) * (y1 - y0)
    if not np.all((x1 > x0) & (y1 > y0)):
        raise ValueError("every cell box needs x1 > x0 and y1 > y0")
    table = _summed_area_table(mask.astype(bool))
    covered = (_mask_area_up_to(table, x1, y1) - _mask_area_up_to(table, x0, y1)
               - _mask_area_up_to(table, x1, y0) + _mask_area_up_to(table, x0, y0))
    return np.where(padding, 0.0, np.clip(covered / box_area, 0.0, 1.0))


def object_cells(overlap: np.ndarray, min_overlap: float = 0.0) -> np.ndarray:
    """Cells whose covered fraction is strictly greater than `min_overlap` (0.0 = any overlap)."""
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
    """Sequence positions of the selected cells, in row-major cell order (int64, 1-D).

    `image_token_positions[k]` is the sequence position of the k-th image token, which covers
    cell (k // cols, k % cols); a (rows, cols) array of positions is accepted too.
    """
    grid = _as_grid(cells)
    positions = np.asarray(image_token_positions, dtype=np.int64).reshape(-1)
    if positions.size != grid.size:
        raise ValueError(f"{positions.size} image token positions for a {grid.shape[0]}x{grid.shape[1]} "
                         f"grid of {grid.size} cells")
    return positions[grid.reshape(-1)]


def last_row_cells(shape: tuple[int, int]) -> np.ndarray:
    """The last row of image cells (the last image tokens in LLaVA's row-major order)."""
    grid = np.zeros(shape, dtype=bool)
    grid[-1, :] = True
    return grid


def background_cells(object_cells_grid: np.ndarray, buffer: int = 0) -> np.ndarray:
    """Cells outside the object; with `buffer` > 0 also outside its `buffer`-times dilation."""
    return ~dilate_cells(object_cells_grid, buffer)


def random_cells(shape: tuple[int, int], n: int, rng: RngLike,
                 exclude: np.ndarray | None = None) -> np.ndarray:
    """`n` distinct cells drawn uniformly (without replacement) among cells not in `exclude`.

    `rng` is a numpy Generator (advanced by the draw) or an int seed. Raises ValueError when
    fewer than `n` cells are available.
    """
    if exclude is not None and tuple(np.shape(exclude)) != tuple(shape):
        raise ValueError(f"exclude has shape {np.shape(exclude)}, grid has shape {tuple(shape)}")
    candidates = np.flatnonzero(np.ones(shape, dtype=bool) if exclude is None else ~_as_grid(exclude))
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
