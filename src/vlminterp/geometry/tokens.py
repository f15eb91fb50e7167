"""Image tokens of any family: where each token sits (tile, row, col) and sets of tokens within tiles.

    from vlminterp.geometry.tokens import ImageCells, dilate_tokens, token_distance

    cells = adapter.image_cells((width, height), "crop")   # an ImageCells: tile, row, col, exact box per token
    cells.grid_of(values, tile=0)                          # a per-token array as one tile's (rows, cols) grid
    obj_b1 = dilate_tokens(cells, base, buffer=1)          # 8-neighbourhood within each tile
    distance = token_distance(cells, base)                 # Chebyshev, within each tile (inf: none there)
    last = last_row_tokens(cells)                          # last row of the last tile (next to the text)

A tile is one square crop the vision tower saw: the single grid of LLaVA (tile 0), one of
InternVL's high-resolution tiles or its global thumbnail, the one dynamic grid of Qwen2-VL. A
`TokenLayout` says where each image token of one image sits (tile, row, col, in image-token
order) and each tile's (rows, cols); `ImageCells` (the adapter's geometry: exact boxes in the
original image) and `experiments.shared.cells.TargetCells` (the object-flag table of one target) are
token layouts. The functions below take any object with `tile`, `row`, `col` (N,) arrays and
`tile_shapes`, and (N,) bool token sets in image-token order.

Neighbourhoods never cross tiles: two tokens of different tiles are never neighbours, whatever
their boxes (InternVL's thumbnail is a tile of its own, overlapping the high-resolution tiles).
For a single-grid family (LLaVA: one tile, row-major) these equal the `geometry.grid` functions
exactly.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import numpy as np

from .boxes import PixelBoxes, even_edges
from .grid import chebyshev_distance, dilate_cells
from .patch_grid import ImageGeometry, PatchGrid


@dataclass(frozen=True, eq=False)
class TokenLayout:
    """Where each image token of ONE image sits, in image-token (sequence) order: token k lies in
    tile `tile[k]` at (`row[k]`, `col[k]`) of that tile's token grid, of shape `tile_shapes[t]`."""

    tile: np.ndarray  # (N,) int
    row: np.ndarray  # (N,) int
    col: np.ndarray  # (N,) int
    tile_shapes: tuple[tuple[int, int], ...]  # (rows, cols) of each tile's token grid

    @property
    def num_tokens(self) -> int:
        return len(self.tile)

    @property
    def num_tiles(self) -> int:
        return len(self.tile_shapes)

    def cells(self) -> np.ndarray:
        """(N, 3) int array of (tile, row, col), in image-token order."""
        return np.stack([self.tile, self.row, self.col], axis=1)

    def tokens_of_tile(self, tile: int) -> np.ndarray:
        """Image-token indices (within the image) of one tile, in token order."""
        return np.flatnonzero(self.tile == tile)

    def token_index(self, tile: int, row: int, col: int) -> int:
        """The image-token index of cell (tile, row, col)."""
        if not 0 <= tile < self.num_tiles:
            raise IndexError(f"tile {tile} outside the image's {self.num_tiles} tiles")
        rows, cols = self.tile_shapes[tile]
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"cell ({row}, {col}) outside tile {tile}'s {rows}x{cols} grid")
        (index,) = np.flatnonzero((self.tile == tile) & (self.row == row) & (self.col == col))
        return int(index)

    def grid_of(self, values: np.ndarray, tile: int = 0) -> np.ndarray:
        """One tile's part of a per-token array (N, ...) as its (rows, cols, ...) grid."""
        rows, cols = self.tile_shapes[tile]
        tokens = self.tokens_of_tile(tile)
        order = np.argsort(self.row[tokens] * cols + self.col[tokens], kind="stable")
        values = np.asarray(values)
        return values[tokens[order]].reshape(rows, cols, *values.shape[1:])

    def dilate(self, selected: np.ndarray, buffer: int) -> np.ndarray:
        return dilate_tokens(self, selected, buffer)

    def distance(self, selected: np.ndarray) -> np.ndarray:
        return token_distance(self, selected)

    def last_row(self) -> np.ndarray:
        return last_row_tokens(self)

    def check(self) -> None:
        """Raise ValueError unless every tile's tokens cover its grid exactly once."""
        for _ in tile_tokens(self):
            pass


@dataclass(frozen=True, eq=False)
class ImageCells(TokenLayout):
    """The adapter's geometry of ONE image: the token layout and what each token covers.

    Token k covers the box `pixel_boxes[k]` of the ORIGINAL image, exact (`geometry.boxes.PixelBoxes`;
    no box: wholly in padding); `boxes[k]` = [x0, y0, x1, y1) as floats (a row of NaN: no box),
    for display. Several tokens may cover the same pixels (thumbnail vs tiles).
    """

    pixel_boxes: PixelBoxes  # N exact boxes
    tile_kinds: tuple[str, ...]  # per tile: "grid" (single-grid family), "tile" or "thumbnail"
    tile_boxes: np.ndarray  # (num_tiles, 4) region of the original image each tile shows
    original_size: tuple[int, int]  # (width, height)

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float64 boxes in original-image pixels (NaN rows: no box)."""
        return self.pixel_boxes.as_float()

    def grid_boxes(self, tile: int = 0) -> np.ndarray:
        """(rows, cols, 4) boxes of one tile, the layout `geometry.grid.cell_overlap` takes."""
        return self.grid_of(self.boxes, tile)

    @classmethod
    def from_grid(cls, grid: PatchGrid, original_size: tuple[int, int], geometry: ImageGeometry) -> "ImageCells":
        """The one tile of a single-grid family (LLaVA): the grid's cells, row-major, and their boxes."""
        pixel_boxes = grid.pixel_boxes(original_size, geometry)
        cells = grid.cells()
        return cls(
            tile=np.zeros(grid.num_cells, dtype=np.int64),
            row=cells[:, 0],
            col=cells[:, 1],
            pixel_boxes=pixel_boxes,
            tile_shapes=((grid.rows, grid.cols),),
            tile_kinds=("grid",),
            tile_boxes=_outer_box(pixel_boxes.as_float()),
            original_size=tuple(original_size),
        )

    @classmethod
    def from_tiles(cls, tiles: list[tuple[str, int, int, Sequence[int | Fraction]]],
                   original_size: tuple[int, int]) -> "ImageCells":
        """Build from (kind, rows, cols, region) per tile, in token order; each tile's region
        [x0, y0, x1, y1) of the original image (ints or Fractions: exact) is split evenly into its
        rows x cols cells (row-major)."""
        tile_ids, rows_out, cols_out, boxes = [], [], [], []
        for index, (_, rows, cols, region) in enumerate(tiles):
            x0, y0, x1, y1 = region
            r, c = np.divmod(np.arange(rows * cols), cols)
            tile_ids.append(np.full(rows * cols, index))
            rows_out.append(r)
            cols_out.append(c)
            boxes.append(PixelBoxes.grid(even_edges(x0, x1, cols), even_edges(y0, y1, rows)))
        return cls(
            tile=np.concatenate(tile_ids),
            row=np.concatenate(rows_out),
            col=np.concatenate(cols_out),
            pixel_boxes=PixelBoxes.concatenate(boxes),
            tile_shapes=tuple((rows, cols) for _, rows, cols, _ in tiles),
            tile_kinds=tuple(kind for kind, *_ in tiles),
            tile_boxes=np.array([[float(v) for v in region] for *_, region in tiles], dtype=np.float64).reshape(-1, 4),
            original_size=tuple(original_size),
        )

    @classmethod
    def from_tile_split(cls, original_size: tuple[int, int], cols: int, rows: int, token_grid: tuple[int, int],
                        thumbnail: bool) -> "ImageCells":
        """The whole image cut evenly into cols x rows tiles, row-major, each a `token_grid`
        (token rows, cols), then, if `thumbnail`, the whole image as one more tile of that grid
        (InternVL's thumbnail, Idefics3's global image)."""
        width, height = original_size
        token_rows, token_cols = token_grid
        tiles = []
        for index in range(cols * rows):
            r, c = divmod(index, cols)
            region = (Fraction(c * width, cols), Fraction(r * height, rows),
                      Fraction((c + 1) * width, cols), Fraction((r + 1) * height, rows))
            tiles.append(("tile", token_rows, token_cols, region))
        if thumbnail:
            tiles.append(("thumbnail", token_rows, token_cols, (0, 0, width, height)))
        return cls.from_tiles(tiles, original_size)


def _outer_box(boxes: np.ndarray) -> np.ndarray:
    """(1, 4) outer box of a grid's cells (NaN cells ignored)."""
    finite = boxes[~np.isnan(boxes).any(axis=1)]
    if len(finite) == 0:
        return np.full((1, 4), np.nan)
    return np.array([[finite[:, 0].min(), finite[:, 1].min(), finite[:, 2].max(), finite[:, 3].max()]])


def tile_tokens(layout) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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


def _as_tokens(layout, selected: np.ndarray) -> np.ndarray:
    selected = np.asarray(selected)
    if selected.dtype != bool or selected.shape != (len(layout.tile),):
        raise ValueError(f"a token set must be (N,) bool with N = {len(layout.tile)} image tokens, "
                         f"got {selected.dtype} {selected.shape}")
    return selected


def _per_tile(layout, selected: np.ndarray, grid_function, dtype) -> np.ndarray:
    """Apply a (rows, cols) -> (rows, cols) function to each tile's part of a token set."""
    selected = _as_tokens(layout, selected)
    out = np.zeros(len(selected), dtype=dtype)
    for (tokens, flat), shape in zip(tile_tokens(layout), layout.tile_shapes):
        grid = np.zeros(shape[0] * shape[1], dtype=bool)
        grid[flat] = selected[tokens]
        out[tokens] = grid_function(grid.reshape(shape)).reshape(-1)[flat]
    return out


def dilate_tokens(layout, selected: np.ndarray, buffer: int) -> np.ndarray:
    """`dilate_cells` of a token set, within each tile (a tile's border stops the dilation)."""
    if buffer < 0:
        raise ValueError(f"buffer must be >= 0, got {buffer}")
    return _per_tile(layout, selected, lambda grid: dilate_cells(grid, buffer), bool)



def token_distance(layout, selected: np.ndarray) -> np.ndarray:
    """(N,) Chebyshev distance of each token to the nearest selected token OF ITS OWN TILE, in
    cells of that tile; inf for the tokens of a tile holding no selected token."""
    return _per_tile(layout, selected, chebyshev_distance, np.float64)


def last_row_tokens(layout) -> np.ndarray:
    """(N,) bool: the last row of the last tile in token order, i.e. the image tokens just before
    the text (LLaVA: the grid's last row; InternVL: the thumbnail's, or the single tile's)."""
    last = len(layout.tile_shapes) - 1
    rows = layout.tile_shapes[last][0]
    return (np.asarray(layout.tile) == last) & (np.asarray(layout.row) == rows - 1)
