"""Adapter for `LlavaForConditionalGeneration` (llava-hf/llava-1.5-7b-hf, xtuner/llava-phi-3-mini-hf,
the shapes organism, the synthetic test models).

    adapter = LlavaAdapter(model, processor)
    adapter.format_prompt("Describe this image.")   # 'USER: <image>\\nDescribe this image. ASSISTANT:'

Module paths: model.model.vision_tower -> model.model.multi_modal_projector -> model.model.language_model
(embed_tokens, layers, norm) -> model.lm_head. One image = rows x cols tokens (CLS dropped), row-major.
"""
from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from vlminterp.geometry import ImageGeometry, PatchGrid, pad_to_square

from .conditional_generation import ConditionalGenerationAdapter
from .config_values import setting
from .prompt import PromptTemplate

VICUNA_TEMPLATE = PromptTemplate(user_turn="USER: {image}\n{text} ASSISTANT:", system_turn="{system} ")
PHI3_TEMPLATE = PromptTemplate(
    user_turn="<|user|>\n{image}\n{text}<|end|>\n<|assistant|>\n", system_turn="<|system|>\n{system}<|end|>\n"
)
# Text model type -> chat template of the LLaVA checkpoints built on it.
TEMPLATES_BY_TEXT_MODEL = {"llama": VICUNA_TEMPLATE, "phi3": PHI3_TEMPLATE}


class LlavaAdapter(ConditionalGenerationAdapter):
    family = "llava"
    model_class_name = "LlavaForConditionalGeneration"

    def __init__(self, model: nn.Module, processor=None):
        super().__init__(model, processor)
        strategy = model.config.vision_feature_select_strategy
        if strategy != "default":
            raise NotImplementedError(
                f"vision_feature_select_strategy={strategy!r}: only 'default' (CLS dropped) has a cell grid here"
            )
        vision = model.config.vision_config
        input_size, shortest_edge = vision.image_size, vision.image_size
        image_processor = getattr(processor, "image_processor", None)
        if image_processor is not None:
            crop = getattr(image_processor, "crop_size", None) or {}
            size = getattr(image_processor, "size", None) or {}
            input_size = setting(crop, "height", input_size)
            shortest_edge = setting(size, "shortest_edge", input_size)
        side = input_size // vision.patch_size
        self._grid = PatchGrid(
            rows=side, cols=side, patch_size=vision.patch_size, input_size=input_size, shortest_edge=shortest_edge
        )

    # ---- image -------------------------------------------------------------------------------------
    @property
    def grid(self) -> PatchGrid:
        return self._grid

    def prepare_image(self, image: Image.Image, geometry: ImageGeometry | None = None) -> Image.Image:
        geometry = self._geometry(geometry)
        if geometry == "crop":
            return image
        if geometry == "pad":
            mean = getattr(getattr(self.processor, "image_processor", None), "image_mean", None)
            mean = mean if mean is not None else (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP mean
            return pad_to_square(image.convert("RGB"), tuple(int(m * 255) for m in mean))
        raise ValueError(f"unknown geometry {geometry!r}; expected 'crop' or 'pad'")

    # ---- prompts -----------------------------------------------------------------------------------
    @property
    def prompt_template(self) -> PromptTemplate:
        text_type = getattr(self.text_config, "model_type", "llama")
        return TEMPLATES_BY_TEXT_MODEL.get(text_type, VICUNA_TEMPLATE)

    # ---- computation -------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor, **image_inputs) -> torch.Tensor:
        vision_dtype = next(self.model.model.vision_tower.parameters()).dtype
        out = self.model.model.get_image_features(pixel_values=pixel_values.to(vision_dtype), return_dict=True)
        return torch.stack(list(out.pooler_output))
