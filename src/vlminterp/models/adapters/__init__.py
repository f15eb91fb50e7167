"""Per-architecture adapters and the registry that picks one for a model.

    from vlminterp.models.adapters import adapter_for
    adapter = adapter_for(model, processor)   # LlavaAdapter for LlavaForConditionalGeneration
                                              # InternVLAdapter, Qwen2VLAdapter, Gemma3Adapter,
                                              # Qwen2_5_VLAdapter, Qwen3VLAdapter, LlavaOnevisionAdapter,
                                              # Idefics3Adapter likewise

A new family: subclass `VLMAdapter` (or `ConditionalGenerationAdapter`, which already maps the module
paths of transformers' `*ForConditionalGeneration` layout) in its own module and call
`register_adapter(ThatAdapter)`. Image geometry (patch grids, per-token cells) is `vlminterp.geometry`.
"""
from __future__ import annotations

from .base import OPERATIONS, SITE_KINDS, Site, SiteError, UnsupportedOperationError, VLMAdapter, parse_site
from .conditional_generation import ConditionalGenerationAdapter
from .positions import RopePositions
from .prompt import LLAVA_SYSTEM_PROMPT, PromptTemplate, answer_first_token
from .token_groups import TOKEN_GROUPS, TokenGroups
from .gemma3 import Gemma3Adapter
from .idefics3 import Idefics3Adapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_vl import Qwen2VLAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .qwen3_vl import Qwen3VLAdapter

ADAPTERS: list[type[VLMAdapter]] = []


class UnsupportedModelError(ValueError):
    """No adapter knows this model family."""


def register_adapter(adapter_class: type[VLMAdapter]) -> type[VLMAdapter]:
    """Add an adapter class to the registry (usable as a decorator)."""
    if adapter_class not in ADAPTERS:
        ADAPTERS.append(adapter_class)
    return adapter_class


def adapter_class_for_config(config) -> type[VLMAdapter]:
    """The adapter class serving a model with this top-level config."""
    for adapter_class in ADAPTERS:
        if adapter_class.matches(config):
            return adapter_class
    known = ", ".join(a.family for a in ADAPTERS)
    raise UnsupportedModelError(
        f"no adapter for model_type={getattr(config, 'model_type', None)!r} (known families: {known})"
    )


def adapter_for(model, processor=None) -> VLMAdapter:
    """The adapter instance for a loaded model (optionally with its processor, for geometry sizes)."""
    return adapter_class_for_config(model.config)(model, processor)


register_adapter(LlavaAdapter)
register_adapter(InternVLAdapter)
register_adapter(Qwen2VLAdapter)
register_adapter(Gemma3Adapter)
register_adapter(Qwen2_5_VLAdapter)
register_adapter(Qwen3VLAdapter)
register_adapter(LlavaOnevisionAdapter)
register_adapter(Idefics3Adapter)

__all__ = [
    "ADAPTERS",
    "ConditionalGenerationAdapter",
    "Gemma3Adapter",
    "Idefics3Adapter",
    "OPERATIONS",
    "UnsupportedOperationError",
    "InternVLAdapter",
    "LLAVA_SYSTEM_PROMPT",
    "answer_first_token",
    "LlavaAdapter",
    "LlavaOnevisionAdapter",
    "PromptTemplate",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "Qwen3VLAdapter",
    "RopePositions",
    "TOKEN_GROUPS",
    "TokenGroups",
    "UnsupportedModelError",
    "VLMAdapter",
    "adapter_class_for_config",
    "adapter_for",
    "register_adapter",
]
