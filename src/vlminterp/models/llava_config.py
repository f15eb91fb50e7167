"""The LLaVA architecture as a transformers config at any size: the one builder of the tiny LLaVAs
(the synthetic test models, the shapes organism, the GPU smoke run's tiny checkpoint).

    text = LlamaConfig(vocab_size=..., hidden_size=64, ...)
    config = llava_config(text, image_size=48, patch_size=8, vision_hidden_size=32, vision_intermediate_size=64,
                          vision_layers=2, vision_heads=2, vision_initializer_range=0.1, image_token_id=4)

A CLIP vision tower (quick-GELU, projection = its width) whose CLS token is dropped, so an image
is (image_size / patch_size)^2 tokens, row-major; a two-layer GELU projector; the text model given.
"""
from __future__ import annotations

from typing import Any

from transformers import CLIPVisionConfig, LlavaConfig, PreTrainedConfig


def num_image_tokens(image_size: int, patch_size: int) -> int:
    """Image tokens per image after dropping CLS: one per patch."""
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    return (image_size // patch_size) ** 2


def llava_config(text_config: PreTrainedConfig, *, image_size: int, patch_size: int, vision_hidden_size: int,
                 vision_intermediate_size: int, vision_layers: int, vision_heads: int,
                 vision_initializer_range: float, image_token_id: int, vision_feature_layer: int = -2,
                 **settings: Any) -> LlavaConfig:
    """A LlavaConfig: `text_config`, a CLIP vision tower of these sizes, features of layer
    `vision_feature_layer` (CLS dropped), a GELU projector; `settings`: further LlavaConfig keys
    (pad_token_id, tie_word_embeddings, ...)."""
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=vision_intermediate_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden_size,
        initializer_range=vision_initializer_range,
    )
    return LlavaConfig(
        text_config=text_config,
        vision_config=vision,
        image_token_id=image_token_id,
        image_seq_length=num_image_tokens(image_size, patch_size),
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        **settings,
    )
