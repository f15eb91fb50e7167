"""Cell sets on one (rows, cols) grid: overlap, object cells, dilation, random cells, positions.

    from vlminterp.geometry.grid import cell_overlap, object_cells, dilate_cells, cells_to_positions

    overlap = cell_overlap(mask, cell_boxes)            # (rows, cols) fraction of each cell covered, exact
    obj = object_cells(overlap, min_overlap=0.0)        # any overlap, as the original N1 code
    obj_b1 = dilate_cells(obj, buffer=1)                # 8-neighbourhood dilation, once
    positions = cells_to_positions(obj_b1, image_token_positions)   # sequence positions
    rand = matched_random_cells(obj, rng=np.random.default_rng(0))  # same count, off the object

Cells are ordered row-major, as LLaVA orders its image tokens. A cell box of NaN (a cell wholly
in the padding of the "pad" geometry) has overlap 0. For tiled families use the token-level
functions of `geometry.tokens`, which apply these within each tile.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from .boxes import mask_tokens

RngLike = np.random.Generator | int


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


def chebyshev_distance(cells: np.ndarray) -> np.ndarray:
    """(rows, cols) Chebyshev distance (in cells) of every cell to the nearest True cell (inf if none)."""
    grid = _as_grid(cells)
    rows, cols = np.indices(grid.shape)
    targets = np.argwhere(grid)
    if len(targets) == 0:
        return np.full(grid.shape, np.inf)
    d = np.maximum(np.abs(rows[..., None] - targets[:, 0]), np.abs(cols[..., None] - targets[:, 1]))
    return d.min(axis=-1).astype(float)

