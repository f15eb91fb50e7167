"""How an original image becomes the square model input, and the patch grid it is cut into.

    from vlminterp.geometry.patch_grid import PatchGrid, pad_to_square

    grid = PatchGrid(rows=24, cols=24, patch_size=14, input_size=336, shortest_edge=336)
    grid.cell_of_token(k)                               # (row, col) of the k-th image token
    boxes = grid.pixel_boxes((640, 480), "crop")        # exact box of each cell in the ORIGINAL image

Image geometry ("crop", "pad" or "resize") says how an original image became the model input:
- "crop": the HF LLaVA-1.5 processor: resize the shortest side to `shortest_edge`, centre-crop
  `input_size` x `input_size` (parts of a non-square image are cut away);
- "pad": the original LLaVA code: pad to a square with the mean colour (`pad_to_square`), then
  resize to `input_size` (nothing is cut; cells may fall wholly in the padding);
- "resize": the whole image is resized (aspect ratio may change slightly, nothing is cut or padded):
  InternVL's tiles + thumbnail, Qwen2-VL's dynamic resolution (no `PatchGrid`: the adapters build
  their `geometry.tokens.ImageCells` per image).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
from PIL import Image

from .boxes import PixelBoxes

ImageGeometry = Literal["crop", "pad", "resize"]
GEOMETRIES: tuple[str, ...] = ("crop", "pad", "resize")
PATCH_GRID_GEOMETRIES: tuple[str, ...] = ("crop", "pad")  # what a square PatchGrid supports


@dataclass(frozen=True)
class PatchGrid:
    """The square patch grid one image becomes: image token k sits at cell (k // cols, k % cols)."""

    rows: int
    cols: int
    patch_size: int  # pixels of the model input per cell side
    input_size: int  # side of the square model input in pixels (crop size)
    shortest_edge: int  # the processor resizes the shortest original side to this ("crop" geometry)

    @property
    def num_cells(self) -> int:
        return self.rows * self.cols

    def cell_of_token(self, k: int) -> tuple[int, int]:
        """(row, col) of the k-th image token of an image (row-major order)."""
        if not 0 <= k < self.num_cells:
            raise IndexError(f"image token {k} outside a {self.rows}x{self.cols} grid")
        return divmod(k, self.cols)

    def cells(self) -> np.ndarray:
        """(num_cells, 2) int array of (row, col), in image-token order."""
        k = np.arange(self.num_cells)
        return np.stack([k // self.cols, k % self.cols], axis=1)

    def pixel_boxes(self, original_size: tuple[int, int], geometry: ImageGeometry = "crop") -> PixelBoxes:
        """Exact box [x0, x1) x [y0, y1) in the ORIGINAL image of each cell, in image-token order.

        `original_size` is (width, height) as PIL reports it; pixel (x, y) covers [x, x+1) x [y, y+1).
        A cell covers a patch of the model input; inverting the resize (and crop or padding) maps it
        to a box with rational edges, kept exact (`geometry.boxes.PixelBoxes`). Under "crop" what lies
        outside the crop is in no box. Under "pad" boxes are clipped to the image, and a cell lying
        wholly in the padding has no box.
        """
        width, height = original_size
        # cell edges in model-input pixels, per axis
        patch_edges = ([self.patch_size * k for k in range(self.cols + 1)],
                       [self.patch_size * k for k in range(self.rows + 1)])
        if geometry == "crop":
            # Mirrors transformers' get_resize_output_image_size (default_to_square=False) and
            # center_crop: short side -> shortest_edge, long side -> int(shortest_edge * long / short),
            # crop offset = (resized - crop) // 2. Resized pixel u is original u * width / new_w.
            if width <= height:
                new_w, new_h = self.shortest_edge, int(self.shortest_edge * height / width)
            else:
                new_w, new_h = int(self.shortest_edge * width / height), self.shortest_edge
            left, top = (new_w - self.input_size) // 2, (new_h - self.input_size) // 2
            x_edges = [Fraction((left + u) * width, new_w) for u in patch_edges[0]]
            y_edges = [Fraction((top + v) * height, new_h) for v in patch_edges[1]]
        elif geometry == "pad":
            # expand2square pastes the image at ((side - width) // 2, (side - height) // 2) of a
            # side x side square, which is then resized to input_size.
            side = max(width, height)
            pad_x, pad_y = (side - width) // 2, (side - height) // 2
            x_edges = [min(max(Fraction(u * side, self.input_size) - pad_x, 0), width) for u in patch_edges[0]]
            y_edges = [min(max(Fraction(v * side, self.input_size) - pad_y, 0), height) for v in patch_edges[1]]
        else:
            raise ValueError(f"unknown geometry {geometry!r}; a PatchGrid supports {PATCH_GRID_GEOMETRIES}")
        return PixelBoxes.grid(x_edges, y_edges)

    def cell_boxes(self, original_size: tuple[int, int], geometry: ImageGeometry = "crop") -> np.ndarray:
        """`pixel_boxes` as (num_cells, 4) floats, a row of NaN for a cell wholly in padding."""
        return self.pixel_boxes(original_size, geometry).as_float()


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """The original LLaVA `expand2square`: paste the image centred on a `fill`-coloured square."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square
