"""Image geometry in one place: exact boxes, patch grids, image tokens and tiles, masks to tokens.

    from vlminterp.geometry import PixelBoxes, PatchGrid, ImageCells

Modules, from the ground up (each imports only those above it):
    boxes       exact rational boxes in original-image pixels (`PixelBoxes`), a mask's exact
                coverage of them (`mask_coverage`, `mask_tokens`)
    grid        cell sets on one (rows, cols) grid: overlap, dilation, distance, random draws,
                cells -> sequence positions
    patch_grid  how an image becomes the square model input ("crop", "pad", "resize") and the
                square `PatchGrid` of a single-grid family (LLaVA); `pad_to_square`
    tokens      the token layout of one image (`TokenLayout`: tile, row, col per image token),
                the adapters' `ImageCells` (with exact boxes), token sets within tiles
    objects     object masks to object tokens (`object_tokens` + `category_mask`, K3), the
                exclusion reasons (the Neo cell table built on them: `experiments.shared.cells`)

Every box edge is exact (integers over an integer scale, no float residue): a token holds an
object exactly when a mask pixel's square meets its box in a positive area.
"""
from __future__ import annotations

from .boxes import PixelBoxes, as_pixel_boxes, even_edges, mask_coverage, mask_tokens, uniform_cell_boxes
from .grid import (background_cells, cell_box_grid, cell_overlap, cells_to_positions, chebyshev_distance,
                   dilate_cells, last_row_cells, matched_random_cells, object_cells, random_cells)
from .objects import (EXCLUDED_BELOW_MIN_OVERLAP, EXCLUDED_EMPTY_MASK, EXCLUDED_OUTSIDE_CROP, category_mask,
                      exclusion_reason, object_overlap, object_tokens)
from .patch_grid import GEOMETRIES, PATCH_GRID_GEOMETRIES, ImageGeometry, PatchGrid, pad_to_square
from .tokens import ImageCells, TokenLayout, dilate_tokens, last_row_tokens, tile_tokens, token_distance

__all__ = [
    "EXCLUDED_BELOW_MIN_OVERLAP", "EXCLUDED_EMPTY_MASK", "EXCLUDED_OUTSIDE_CROP", "GEOMETRIES", "ImageCells",
    "ImageGeometry", "PATCH_GRID_GEOMETRIES", "PatchGrid", "PixelBoxes", "TokenLayout", "as_pixel_boxes",
    "background_cells", "category_mask", "cell_box_grid", "cell_overlap", "cells_to_positions", "chebyshev_distance",
    "dilate_cells", "dilate_tokens", "even_edges", "exclusion_reason", "last_row_cells", "last_row_tokens",
    "mask_coverage", "mask_tokens", "matched_random_cells", "object_cells", "object_overlap", "object_tokens",
    "pad_to_square", "random_cells", "tile_tokens", "token_distance", "uniform_cell_boxes",
]
