"""Adapter for transformers-native `InternVLForConditionalGeneration` (OpenGVLab/InternVL3-*-hf, the
project's stand-in for the remote-code InternVL2-76B; the synthetic `tiny-internvl` test models).

    adapter = InternVLAdapter(model, processor)
    cells = adapter.image_cells((640, 480))   # tiles row-major, then the global thumbnail
    cells.tile_kinds                          # ('tile', 'tile', ..., 'thumbnail')
    cells.boxes[k]                            # pixels of the original image token k covers

Module paths: model.model.vision_tower (InternViT, CLS dropped) -> pixel shuffle ->
model.model.multi_modal_projector -> model.model.language_model (Qwen2/Qwen3: embed_tokens, layers,
norm) -> model.lm_head.

Geometry ("resize" only: nothing is cut or padded). The GOT-OCR2 image processor that InternVL
uses picks a tile canvas (cols x rows tiles of tile_size) whose aspect ratio is closest to the
image's (`get_optimal_tiled_canvas`, min/max tiles from the processor), resizes the WHOLE image to
that canvas and cuts it into tiles, row-major; when there is more than one tile a thumbnail (the
whole image resized to one tile) is appended. Every tile gives (tile_size / patch) ** 2 patches;
the pixel shuffle (downsample_ratio 0.5) merges each 2x2 block of patches into one token,
row-major, so a tile is a (tile_size / patch / 2)-square token grid (16 x 16 = 256 for 448 px /
14 px). The prompt holds `<img>` + 256 * tiles `<IMG_CONTEXT>` + `</img>` per image.
"""
from __future__ import annotations

import torch
from PIL import Image
from torch import nn
from transformers import InternVLProcessor

from vlminterp.geometry import ImageCells, ImageGeometry

from .conditional_generation import ConditionalGenerationAdapter
from .config_values import setting
from .processor import ImageOnlyProcessorMixin, load_image_only_processor
from .prompt import PromptTemplate

CHATML_USER_TURN = "<|im_start|>user\n{image}\n{text}<|im_end|>\n<|im_start|>assistant\n"
CHATML_SYSTEM_TURN = "<|im_start|>system\n{system}<|im_end|>\n"
# The system message of InternVL's own (remote-code) conversation template, for runs that want the
# original convention (the HF chat template adds no system turn unless one is given).
INTERNVL_SYSTEM_PROMPT = (
    "你是书生·万象，英文名是InternVL，"
    "是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)


class InternVLAdapter(ConditionalGenerationAdapter):
    family = "internvl"
    model_class_name = "InternVLForConditionalGeneration"
    geometries = ("resize",)

    def __init__(self, model: nn.Module, processor=None):
        super().__init__(model, processor)
        config = model.config
        if config.vision_feature_select_strategy != "default":
            raise NotImplementedError(
                f"vision_feature_select_strategy={config.vision_feature_select_strategy!r}: only 'default' "
                "(CLS dropped) has a cell grid here"
            )
        vision = config.vision_config
        tile_h, tile_w = _pair(vision.image_size)
        patch_h, patch_w = _pair(vision.patch_size)
        image_processor = getattr(processor, "image_processor", None)
        size = getattr(image_processor, "size", None)
        if size is not None:
            tile_h, tile_w = setting(size, "height", tile_h), setting(size, "width", tile_w)
        if tile_h % patch_h or tile_w % patch_w:
            raise ValueError(f"tile {tile_h}x{tile_w} is not a whole number of {patch_h}x{patch_w} patches")
        scale = config.downsample_ratio
        self.tile_size = (tile_h, tile_w)
        self.tile_grid = (int(tile_h // patch_h * scale), int(tile_w // patch_w * scale))  # token rows, cols
        # Tiling as the InternVL processor applies it: its own default (crop_to_patches=True) overrides
        # the image processor's attribute; a per-call override is not visible here (set the attribute).
        crop = getattr(image_processor, "crop_to_patches", True)
        processor_defaults = getattr(type(processor), "images_kwargs", None) or {}
        self.crop_to_patches = bool(processor_defaults.get("crop_to_patches", crop))
        self.min_tiles = int(getattr(image_processor, "min_patches", 1) or 1)
        self.max_tiles = int(getattr(image_processor, "max_patches", 12) or 12)

    @classmethod
    def load_processor(cls, id_or_path: str, **kwargs):
        """AutoProcessor, or an image-only `ImageOnlyInternVLProcessor` where the video processor needs torchvision."""
        return load_image_only_processor(ImageOnlyInternVLProcessor, id_or_path, **kwargs)

    # ---- image -------------------------------------------------------------------------------------
    @property
    def has_single_grid(self) -> bool:
        return False

    @property
    def tokens_per_tile(self) -> int:
        return self.tile_grid[0] * self.tile_grid[1]

    def tile_layout(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(cols, rows) of high-resolution tiles the processor cuts an image of this size into."""
        if not (self.crop_to_patches and self.max_tiles > 1):
            return 1, 1
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        width, height = original_size
        return get_optimal_tiled_canvas((height, width), self.tile_size, self.min_tiles, self.max_tiles)

    def image_cells(self, original_size: tuple[int, int], geometry: ImageGeometry | None = None) -> ImageCells:
        self._geometry(geometry)
        cols, rows = self.tile_layout(original_size)
        # the processor appends a thumbnail only when it cut several tiles
        return ImageCells.from_tile_split(original_size, cols, rows, self.tile_grid, thumbnail=cols * rows > 1)

    def prepare_image(self, image: Image.Image, geometry: ImageGeometry | None = None) -> Image.Image:
        self._geometry(geometry)
        return image

    # ---- prompts -----------------------------------------------------------------------------------
    @property
    def prompt_template(self) -> PromptTemplate:
        placeholder = getattr(self.processor, "image_token", None) or "<IMG_CONTEXT>"
        return PromptTemplate(user_turn=CHATML_USER_TURN, system_turn=CHATML_SYSTEM_TURN, image_placeholder=placeholder)

    # ---- computation -------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor, **image_inputs) -> torch.Tensor:
        """(tiles, tokens_per_tile, hidden): every tile of every image, in prompt order."""
        vision_dtype = next(self.model.model.vision_tower.parameters()).dtype
        out = self.model.model.get_image_features(pixel_values=pixel_values.to(vision_dtype), return_dict=True)
        return out.pooler_output


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


class ImageOnlyInternVLProcessor(ImageOnlyProcessorMixin, InternVLProcessor):
    """`InternVLProcessor` that may be built without a video processor (images only)."""
