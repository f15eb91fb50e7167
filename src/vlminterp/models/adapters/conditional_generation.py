"""The adapter of transformers' `*ForConditionalGeneration` layout, which LLaVA, InternVL and Qwen2-VL share.

    class LlavaAdapter(ConditionalGenerationAdapter):
        family = "llava"; model_class_name = "LlavaForConditionalGeneration"
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .base import VLMAdapter


class ConditionalGenerationAdapter(VLMAdapter):
    """The module layout transformers 5 gives LLaVA, InternVL and Qwen2-VL (`*ForConditionalGeneration`):
    model.model.language_model (embed_tokens, layers, norm), model.lm_head, the projector at
    model.model.multi_modal_projector, the image token id in the top-level config, and image
    features scattered into the token embeddings at the image tokens. A family overrides only
    what differs (Qwen2-VL: the projector is the vision tower's merger).

    A family names itself by `family` (its config's `model_type`) and `model_class_name` (the
    transformers class to instantiate); `matches` and `model_class` follow from those."""

    model_class_name: ClassVar[str]

    @classmethod
    def matches(cls, config) -> bool:
        return getattr(config, "model_type", None) == cls.family

    @classmethod
    def model_class(cls) -> type[nn.Module]:
        import transformers

        return getattr(transformers, cls.model_class_name)

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.language_model.norm

    @property
    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    @property
    def projector(self) -> nn.Module:
        return self.model.model.multi_modal_projector

    @property
    def text_config(self):
        return self.language_model.config

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **image_inputs) -> torch.Tensor:
        return self._scatter_image_features(input_ids, pixel_values, image_inputs)
