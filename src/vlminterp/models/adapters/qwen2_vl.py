"""Adapter for `Qwen2VLForConditionalGeneration` (Qwen/Qwen2-VL-*-Instruct; the synthetic `tiny-qwen2-vl`).

    adapter = Qwen2VLAdapter(model, processor)
    image_inputs = adapter.image_inputs(encoding)            # pixel_values + image_grid_thw
    positions = adapter.rope_positions(input_ids, **image_inputs)   # (3, 1, T) M-RoPE ids + delta
    cells = adapter.image_cells((640, 480))                  # one dynamic grid, 28 px per token side

Module paths: model.model.visual (ViT with 2-D RoPE, merger = the projector) ->
model.model.language_model (Qwen2VLTextModel: embed_tokens, layers, norm) -> model.lm_head.

Geometry ("resize" only). The processor resizes the whole image with `smart_resize` to
h x w, both multiples of factor = patch_size * merge_size (28 px), with h * w within
[min_pixels, max_pixels], aspect ratio kept as closely as that allows; nothing is cut or padded.
Patches are ordered so that each 2 x 2 block of 14 px patches is consecutive, and the merger turns
each block into one token: token k = (r, c) of an (h / 28) x (w / 28) grid, row-major, covering a
28 x 28 block of the resized image = [c * W / cols, r * H / rows, ...) of the original W x H image.

Positions (M-RoPE). Text tokens get 1-D positions in all three components; the image's tokens
get (t, start + r, start + c), and text after the image continues at start + max(rows, cols). So
positions are not sequence indices: the prompt's positions come from the model's own
`get_rope_index`, and later text continues at index + delta (`RopePositions`).
"""
from __future__ import annotations

import torch
from PIL import Image
from torch import nn
from transformers import Qwen2VLProcessor

from vlminterp.geometry import ImageCells, ImageGeometry

from .conditional_generation import ConditionalGenerationAdapter
from .config_values import setting
from .positions import RopePositions
from .processor import ImageOnlyProcessorMixin, load_image_only_processor
from .prompt import PromptTemplate

QWEN2_VL_SYSTEM_PROMPT = "You are a helpful assistant."  # the default system turn of Qwen2-VL's chat template
QWEN2_VL_TEMPLATE = PromptTemplate(
    user_turn="<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n",
    system_turn="<|im_start|>system\n{system}<|im_end|>\n",
    image_placeholder="<|image_pad|>",
    default_system_prompt=QWEN2_VL_SYSTEM_PROMPT,
)


class Qwen2VLAdapter(ConditionalGenerationAdapter):
    family = "qwen2_vl"
    model_class_name = "Qwen2VLForConditionalGeneration"
    geometries = ("resize",)
    image_input_names = ("pixel_values", "image_grid_thw")

    def __init__(self, model: nn.Module, processor=None):
        super().__init__(model, processor)
        vision = model.config.vision_config
        image_processor = getattr(processor, "image_processor", None)
        self.patch_size = int(getattr(image_processor, "patch_size", None) or vision.patch_size)
        self.merge_size = int(getattr(image_processor, "merge_size", None) or vision.spatial_merge_size)
        size = getattr(image_processor, "size", None) or {}
        self.min_pixels = int(setting(size, "shortest_edge", 56 * 56))
        self.max_pixels = int(setting(size, "longest_edge", 28 * 28 * 1280))
        if self.patch_size != vision.patch_size or self.merge_size != vision.spatial_merge_size:
            raise ValueError("the processor's patch/merge sizes differ from the vision tower's")

    @classmethod
    def load_processor(cls, id_or_path: str, **kwargs):
        """AutoProcessor, or an image-only `ImageOnlyQwen2VLProcessor` where the video processor needs torchvision."""
        return load_image_only_processor(ImageOnlyQwen2VLProcessor, id_or_path, **kwargs)

    # ---- structure ---------------------------------------------------------------------------------
    @property
    def projector(self) -> nn.Module:
        return self.model.model.visual.merger

    # ---- image -------------------------------------------------------------------------------------
    @property
    def has_single_grid(self) -> bool:
        return False

    @property
    def factor(self) -> int:
        """Pixels of the resized image per token side (28 for Qwen2-VL)."""
        return self.patch_size * self.merge_size

    def resized_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) the processor resizes an image of `original_size` to."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        width, height = original_size
        new_h, new_w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return new_w, new_h

    def image_cells(self, original_size: tuple[int, int], geometry: ImageGeometry | None = None) -> ImageCells:
        self._geometry(geometry)
        width, height = original_size
        new_w, new_h = self.resized_size(original_size)
        region = (0, 0, width, height)
        return ImageCells.from_tiles([("grid", new_h // self.factor, new_w // self.factor, region)], original_size)

    def prepare_image(self, image: Image.Image, geometry: ImageGeometry | None = None) -> Image.Image:
        self._geometry(geometry)
        return image

    # ---- prompts -----------------------------------------------------------------------------------
    @property
    def prompt_template(self) -> PromptTemplate:
        return QWEN2_VL_TEMPLATE

    # ---- inputs and positions ----------------------------------------------------------------------
    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """0 = text, 1 = image, 2 = video per token (what the processor returns alongside input_ids)."""
        types = (input_ids == self.image_token_id).long()
        video = getattr(self.model.config, "video_token_id", None)
        if video is not None:
            types = types + 2 * (input_ids == video).long()
        return types

    def model_inputs(self, input_ids: torch.Tensor, **image_inputs) -> dict:
        image_inputs = dict(image_inputs)
        if "image_grid_thw" in image_inputs and image_inputs.get("mm_token_type_ids") is None:
            image_inputs["mm_token_type_ids"] = self.mm_token_type_ids(input_ids)
        return {"input_ids": input_ids, **image_inputs}

    def rope_positions(self, input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **_) -> RopePositions:
        """M-RoPE ids (3, 1, T) from the model's own `get_rope_index`, and the continuation delta."""
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.shape[0] != 1:
            raise ValueError("rope_positions takes one input (batch 1)")
        if image_grid_thw is None:
            if bool((input_ids == self.image_token_id).any()):
                raise ValueError("input_ids hold image tokens: M-RoPE positions need image_grid_thw")
            return RopePositions(torch.arange(input_ids.shape[1], device=input_ids.device).expand(3, 1, -1), 0)
        ids, deltas = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=self.mm_token_type_ids(input_ids),
            image_grid_thw=image_grid_thw.to(input_ids.device),
        )
        return RopePositions(ids, int(deltas.flatten()[0]))

    # ---- computation -------------------------------------------------------------------------------
    def image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **_
    ) -> torch.Tensor:
        """(1, N, hidden): every image's tokens, in prompt order (images differ in token count)."""
        if image_grid_thw is None:
            raise ValueError("Qwen2-VL image features need image_grid_thw (from the processor)")
        out = self.model.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        return torch.cat(list(out.pooler_output), dim=0)[None]


class ImageOnlyQwen2VLProcessor(ImageOnlyProcessorMixin, Qwen2VLProcessor):
    """`Qwen2VLProcessor` that may be built without a video processor (images only)."""
