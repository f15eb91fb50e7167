"""Adapter for `LlavaOnevisionForConditionalGeneration` (llava-hf/llava-onevision-qwen2-*-ov-hf; a tiny
random-weight model from the real config shape in the tests, `testing.tiny_llava_onevision`).

    adapter = LlavaOnevisionAdapter(model, processor)
    layout = adapter.anyres_layout((640, 480))   # tiles, resize, padding and the kept (unpadded) grid
    cells = adapter.image_cells((640, 480))      # one row per image-token position, newlines included
    adapter.newline_positions(input_ids)         # the image-token positions that hold no cell

Module paths: model.model.vision_tower (SigLIP, every patch kept: "full") ->
model.model.multi_modal_projector (two linear layers) -> model.model.language_model (Qwen2: embed_tokens,
layers, norm) -> model.lm_head; model.model.image_newline is a learned vector in the text model's space.

Geometry ("resize" only; one image per prompt, "anyres_max_9"). The processor shows the model two
views of an image of W x H pixels, both on tiles of T = 384 px seen as S x S = 27 x 27 patches of
P = 14 px (the patch convolution covers the first 378 px of a tile; its last 6 px rows and columns
are never seen):
- the BASE view: the whole image squashed to T x T; token (r, c) covers [cP W / T, (c+1) P W / T) x
  [rP H / T, (r+1) P H / T) of the original image;
- the ANYRES view: the canvas Wb x Hb of `image_grid_pinpoints` that shows most of the image
  (transformers' `select_best_resolution`), the image resized into it keeping its aspect ratio
  (`get_patch_output_size`) and pasted in its middle, cut into (Hb / T) x (Wb / T) tiles. The model
  joins the tiles' patches into one (Hb / T * S) x (Wb / T * S) grid and drops the rows (or columns)
  it deems padding, as many at the top as at the bottom (`unpad_image`); a kept cell's box is its
  patch mapped back through the paste and the resize (clipped to the image; a cell wholly in the
  paste's padding has no box). When the kept grid exceeds 9 tiles' worth of cells by more than 1.1x
  the model interpolates it bilinearly (no exact box): refused by name (COCO images never get there).

Sequence layout of one image's `<image>` tokens: the 729 base tokens (row-major), then each row of
the kept anyres grid followed by ONE NEWLINE token. A newline token is an image-token position
(`<image>` in input_ids; transformers scatters `image_newline` onto it) but no cell: it shows no
pixel. `image_cells` lists it as a token of its own tile kind "newline" (a rows x 1 tile, no box),
so the cell table stays aligned with the image-token positions and:
- a newline token is never an object token, nor in a dilated object set (no box; tiles never mix);
- an ablation or knockout acts on the positions it is given: the image's positions (every
  `<image>` token) include the newlines, so ablating "the image" replaces their vectors too and a
  knockout of "the image" blocks them as keys (after layer 0 they carry what they read from the
  image); an object's cells never include them. Random controls drawn over all image tokens may
  draw them, as they may draw LLaVA's padding cells (tokens with no box).
Tiles of `image_cells`: 0 = "base" (27 x 27), 1 = "newline" (rows x 1), 2 = "anyres" (rows x
cols). The anyres grid is the last tile so `last_row_tokens` is its last row, the cells just before
the final newline and the text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import LlavaOnevisionProcessor

from vlminterp.geometry import ImageCells, ImageGeometry
from vlminterp.geometry.boxes import PixelBoxes

from .conditional_generation import ConditionalGenerationAdapter
from .config_values import setting
from .processor import ImageOnlyProcessorMixin, load_image_only_processor
from .prompt import PromptTemplate

# The chat template of the llava-hf OneVision checkpoints (transformers' conversion script,
# convert_llava_onevision_weights_to_hf.py): "<|im_start|>user\n<image>\n{text}<|im_end|>\n<|im_start|>assistant\n".
ONEVISION_TEMPLATE = PromptTemplate(
    user_turn="<|im_start|>user\n{image}\n{text}<|im_end|>\n<|im_start|>assistant\n",
    system_turn="<|im_start|>system\n{system}<|im_end|>\n",
    image_placeholder="<image>",
)
NO_BOX = (0, 0, 0, 0)


@dataclass(frozen=True)
class AnyresLayout:
    """How one image of `original_size` (W, H) reaches the model (module docstring). Sizes are
    (height, width) pairs as transformers writes them; `kept` is the unpadded grid's
    (first row, first col, rows, cols) within the full tiles grid."""

    original_size: tuple[int, int]
    side: int  # patches per tile side (27)
    patch: int  # pixels per patch (14)
    tile: int  # pixels per tile side (384)
    canvas: tuple[int, int]  # (Hb, Wb)
    resized: tuple[int, int]  # (new_h, new_w)
    paste: tuple[int, int]  # (top, left) padding of the canvas
    kept: tuple[int, int, int, int]
    interpolated: bool

    @property
    def tiles(self) -> tuple[int, int]:
        return self.canvas[0] // self.tile, self.canvas[1] // self.tile

    @property
    def num_tokens(self) -> int:
        """Image tokens of the image: base cells + kept anyres cells + one newline per kept row."""
        _, _, rows, cols = self.kept
        return self.side * self.side + rows * (cols + 1)

    def _edges(self, axis: int) -> list[tuple[Fraction, Fraction]]:
        """Per kept grid line (row: axis 0, column: axis 1), its [start, end) in original pixels."""
        size = self.original_size[1 - axis]
        first, count = self.kept[axis], self.kept[axis + 2]
        out = []
        for index in range(first, first + count):
            tile, within = divmod(index, self.side)
            start = tile * self.tile + within * self.patch - self.paste[axis]
            scale = Fraction(size, self.resized[axis])
            out.append((max(Fraction(0), start * scale), min(Fraction(size), (start + self.patch) * scale)))
        return out

    def anyres_boxes(self) -> list[tuple]:
        """Exact (x0, y0, x1, y1) of every kept anyres cell, row-major; NO_BOX for pure padding."""
        rows, cols = self._edges(0), self._edges(1)
        return [(x0, y0, x1, y1) if x1 > x0 and y1 > y0 else NO_BOX for y0, y1 in rows for x0, x1 in cols]

    def base_boxes(self) -> list[tuple]:
        width, height = self.original_size
        step = [Fraction(self.patch * width, self.tile), Fraction(self.patch * height, self.tile)]
        return [(c * step[0], r * step[1], (c + 1) * step[0], (r + 1) * step[1])
                for r in range(self.side) for c in range(self.side)]


class LlavaOnevisionAdapter(ConditionalGenerationAdapter):
    family = "llava_onevision"
    model_class_name = "LlavaOnevisionForConditionalGeneration"
    geometries = ("resize",)
    image_input_names = ("pixel_values", "image_sizes")
    absent_sites = {"image_features": "the projector's per-tile output is unpadded and interleaved with newline "
                                      "vectors before it reaches the sequence; read `embed` at the image positions"}

    def __init__(self, model: nn.Module, processor=None):
        super().__init__(model, processor)
        config = model.config
        if config.vision_feature_select_strategy != "full":
            raise NotImplementedError(f"llava_onevision: vision_feature_select_strategy="
                                      f"{config.vision_feature_select_strategy!r}; only 'full' has a cell grid here")
        vision = config.vision_config
        image_processor = getattr(processor, "image_processor", None)
        size = getattr(image_processor, "size", None) or {}
        self.tile_size = int(setting(size, "height", vision.image_size))
        if self.tile_size != vision.image_size or int(setting(size, "width", self.tile_size)) != self.tile_size:
            raise ValueError(f"llava_onevision: the processor's size {size} differs from the vision tower's "
                             f"{vision.image_size} px square")
        self.patch_size = int(vision.patch_size)
        self.side = vision.image_size // vision.patch_size
        pinpoints = getattr(image_processor, "image_grid_pinpoints", None)
        if pinpoints is not None and [list(p) for p in pinpoints] != [list(p) for p in config.image_grid_pinpoints]:
            raise ValueError("llava_onevision: the processor's image_grid_pinpoints differ from the model config's")
        self.pinpoints = [list(p) for p in config.image_grid_pinpoints]
        self.max_tiles = int(config.vision_aspect_ratio.removeprefix("anyres_max_"))

    @classmethod
    def load_processor(cls, id_or_path: str, **kwargs):
        """AutoProcessor, or an image-only processor where the video processor needs torchvision."""
        return load_image_only_processor(ImageOnlyLlavaOnevisionProcessor, id_or_path, **kwargs)

    # ---- image -------------------------------------------------------------------------------------
    @property
    def has_single_grid(self) -> bool:
        return False

    def anyres_layout(self, original_size: tuple[int, int]) -> AnyresLayout:
        """The processor's and the model's handling of one image of `original_size` (W, H)."""
        from transformers.image_processing_utils import select_best_resolution

        width, height = original_size
        canvas_h, canvas_w = select_best_resolution((height, width), self.pinpoints)
        scale_w, scale_h = canvas_w / width, canvas_h / height  # get_patch_output_size, as the processor
        if scale_w < scale_h:
            new_w, new_h = canvas_w, min(math.ceil(height * scale_w), canvas_h)
        else:
            new_h, new_w = canvas_h, min(math.ceil(width * scale_h), canvas_w)
        full_h, full_w = canvas_h // self.tile_size * self.side, canvas_w // self.tile_size * self.side
        top, left, rows, cols = 0, 0, full_h, full_w  # unpad_image, as the model
        if width / height > full_w / full_h:
            rows = int(round(height * (full_w / width), 7))
            top = (full_h - rows) // 2
            rows = full_h - 2 * top
        else:
            cols = int(round(width * (full_h / height), 7))
            left = (full_w - cols) // 2
            cols = full_w - 2 * left
        ratio = (rows * cols / (self.max_tiles * self.side ** 2)) ** 0.5
        return AnyresLayout(tuple(original_size), self.side, self.patch_size, self.tile_size, (canvas_h, canvas_w),
                            (new_h, new_w), ((canvas_h - new_h) // 2, (canvas_w - new_w) // 2),
                            (top, left, rows, cols), ratio > 1.1)

    def image_cells(self, original_size: tuple[int, int], geometry: ImageGeometry | None = None) -> ImageCells:
        """Base cells, then each kept anyres row and its newline (module docstring): tile 0 base,
        1 newline (no box), 2 anyres."""
        self._geometry(geometry)
        layout = self.anyres_layout(original_size)
        if layout.interpolated:
            raise NotImplementedError(
                f"llava_onevision: an image of {original_size[0]}x{original_size[1]} px keeps a "
                f"{layout.kept[2]}x{layout.kept[3]} anyres grid, over {self.max_tiles} tiles' worth: the model "
                "interpolates its tokens bilinearly, so they have no exact box")
        side, (_, _, rows, cols) = self.side, layout.kept
        base_r, base_c = np.divmod(np.arange(side * side), side)
        grid_r, grid_c = np.divmod(np.arange(rows * (cols + 1)), cols + 1)
        newline = grid_c == cols
        tile = np.concatenate([np.zeros(side * side, np.int64), np.where(newline, 1, 2)])
        row = np.concatenate([base_r, grid_r])
        col = np.concatenate([base_c, np.where(newline, 0, grid_c)])
        anyres = iter(layout.anyres_boxes())
        boxes = layout.base_boxes() + [NO_BOX if n else next(anyres) for n in newline]
        pixel_boxes = PixelBoxes.from_edges(boxes)
        width, height = original_size
        anyres_box = pixel_boxes[tile == 2].as_float()
        tile_boxes = np.array([[0, 0, width * (side * self.patch_size) / self.tile_size,
                                height * (side * self.patch_size) / self.tile_size],
                               [np.nan] * 4,
                               [np.nanmin(anyres_box[:, 0]), np.nanmin(anyres_box[:, 1]),
                                np.nanmax(anyres_box[:, 2]), np.nanmax(anyres_box[:, 3])]])
        return ImageCells(tile=tile, row=row, col=col, tile_shapes=((side, side), (rows, 1), (rows, cols)),
                          pixel_boxes=pixel_boxes, tile_kinds=("base", "newline", "anyres"), tile_boxes=tile_boxes,
                          original_size=tuple(original_size))

    def newline_positions(self, input_ids: torch.Tensor, image_sizes) -> list[torch.Tensor]:
        """Per batch row, the sequence indices of the newline tokens (`image_sizes`: per row, the
        (width, height) of each of its images)."""
        out = []
        for blocks, sizes in zip(self.image_blocks(input_ids), image_sizes, strict=True):
            found = [block[torch.as_tensor(self.image_cells(size).tile == 1)]
                     for block, size in zip(blocks, sizes, strict=True)]
            out.append(torch.cat(found) if found else torch.zeros(0, dtype=torch.long))
        return out

    def prepare_image(self, image: Image.Image, geometry: ImageGeometry | None = None) -> Image.Image:
        self._geometry(geometry)
        return image

    # ---- prompts -----------------------------------------------------------------------------------
    @property
    def prompt_template(self) -> PromptTemplate:
        return ONEVISION_TEMPLATE

    # ---- computation -------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None,
                       **_) -> torch.Tensor:
        """(1, N, hidden): every image's base cells, anyres cells and newline vectors, in prompt order."""
        if image_sizes is None:
            raise ValueError("llava_onevision image features need image_sizes (from the processor)")
        vision_dtype = next(self.model.model.vision_tower.parameters()).dtype
        out = self.model.model.get_image_features(pixel_values=pixel_values.to(vision_dtype), image_sizes=image_sizes,
                                                  return_dict=True)
        return torch.cat(list(out.pooler_output), dim=0)[None]


class ImageOnlyLlavaOnevisionProcessor(ImageOnlyProcessorMixin, LlavaOnevisionProcessor):
    """`LlavaOnevisionProcessor` that may be built without a video processor (images only)."""
