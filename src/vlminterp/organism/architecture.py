"""The organism's specification and its Hugging Face LLaVA configuration.

    from vlminterp.organism.architecture import OrganismSpec, build_model
    spec = OrganismSpec()                 # the default organism; OrganismSpec.tiny() for tests
    model = build_model(spec, vocab_size=80, image_token_id=4, pad_token_id=1, bos_token_id=2,
                        eos_token_id=3, image_size=96)

The model is a stock ``transformers.LlavaForConditionalGeneration``: a ``CLIPVisionModel`` tower
(CLS token + one token per patch), the LLaVA 2-layer GELU projector, and a Llama language model.
Features are taken from the tower's last layer (``vision_feature_layer=-1``: with a 2-layer tower
the penultimate layer LLaVA-1.5 uses would be nearly raw patches) with the CLS token dropped
(``vision_feature_select_strategy="default"``), so an image yields (image_size / patch_size)^2
image tokens in row-major order, exactly like LLaVA-1.5's 24 x 24.
"""
from __future__ import annotations

from typing import Any

from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from vlminterp.models.llava_config import llava_config, num_image_tokens  # noqa: F401 (part of this API)

from vlminterp.organism.spec import OrganismSpec


def build_config(spec: OrganismSpec, *, vocab_size: int, image_token_id: int, pad_token_id: int,
                 bos_token_id: int, eos_token_id: int, image_size: int,
                 answer_marker: tuple[int, ...] = ()) -> LlavaConfig:
    """The LlavaConfig of the organism for a tokenizer and a world image size; ``answer_marker``: the
    ids after which an answer starts (a planted routing's, ``models/routing.py``)."""
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=spec.text_hidden_size, intermediate_size=spec.text_intermediate_size,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads, max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.text_initializer_range, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
        eos_token_id=eos_token_id, tie_word_embeddings=False,
    )
    config = llava_config(
        text, image_size=image_size, patch_size=spec.patch_size, vision_hidden_size=spec.vision_hidden_size,
        vision_intermediate_size=spec.vision_intermediate_size, vision_layers=spec.vision_layers,
        vision_heads=spec.vision_heads, vision_initializer_range=spec.vision_initializer_range,
        image_token_id=image_token_id, vision_feature_layer=-1, multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    config.pad_token_id = pad_token_id
    config.bos_token_id = bos_token_id
    config.eos_token_id = eos_token_id
    from vlminterp.models.routing import CONFIG_KEY, routing_config

    routing = routing_config(spec.routing, spec.routing_layers, answer_marker)
    if routing is not None:  # saved with the model; the direct organism's config is unchanged
        setattr(config, CONFIG_KEY, routing)
    return config


def build_model(spec: OrganismSpec, **config_kwargs: Any) -> LlavaForConditionalGeneration:
    """A freshly initialised organism (seeded by ``spec.seed``); keyword arguments as ``build_config``."""
    import torch

    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(build_config(spec, **config_kwargs))
    generation = model.generation_config
    generation.pad_token_id = config_kwargs["pad_token_id"]
    generation.bos_token_id = config_kwargs["bos_token_id"]
    generation.eos_token_id = config_kwargs["eos_token_id"]
    generation.do_sample = False
    generation.max_new_tokens = 32
    from vlminterp.models.routing import install_routing

    install_routing(model)
    return model
