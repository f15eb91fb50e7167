"""Tiny random-weight Qwen2.5-VL / Qwen3-VL models built from the real checkpoints' config.json, shrunk
(tests, the compatibility table): the real processor and tokenizer, the real image geometry (patch
and merge sizes, `smart_resize` limits), the real token ids, the real vision-tower layout at a tiny
width (Qwen2.5-VL: windowed layers and a full-attention one; Qwen3-VL: DeepStack after every vision
layer, so into each of the first three decoder layers).

    model, processor = build_tiny_qwen("../shared/fixtures/processors/Qwen--Qwen3-VL-8B-Instruct")

The M-RoPE sections are scaled to the tiny head size (the real ones sum to head_dim / 2 = 64).
"""
from __future__ import annotations

from pathlib import Path

import torch

from vlminterp.testing.tiny_gemma3 import real_config_dict

HEAD_DIM = 32  # hidden 64 / 2 heads; the real head_dim is 128
TEXT_SIZES = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=2,
                  num_key_value_heads=1)
VISION_SIZES = {
    "qwen2_5_vl": dict(hidden_size=32, intermediate_size=64, num_heads=2, depth=2, out_hidden_size=64,
                       fullatt_block_indexes=[1]),  # layer 0 windowed (112 px windows), layer 1 full
    "qwen3_vl": dict(hidden_size=32, intermediate_size=64, num_heads=2, depth=3, out_hidden_size=64,
                     deepstack_visual_indexes=[0, 1, 2]),
}


def _scaled_sections(sections: list[int]) -> list[int]:
    """M-RoPE sections for HEAD_DIM, proportional to the real ones (which sum to 64)."""
    scaled = [s * (HEAD_DIM // 2) // sum(sections) for s in sections]
    scaled[0] += HEAD_DIM // 2 - sum(scaled)
    return scaled


def tiny_qwen_config(folder: str | Path, **vision_sizes):
    """The folder's config.json (Qwen2.5-VL's flat one or Qwen3-VL's nested one) with both towers shrunk;
    `vision_sizes` override VISION_SIZES (e.g. fullatt_block_indexes=[]: every vision layer windowed)."""
    from transformers import AutoConfig

    raw = real_config_dict(folder, "Qwen2.5-VL / Qwen3-VL")
    family = raw.get("model_type")
    if family not in VISION_SIZES:
        raise ValueError(f"{folder}/config.json: model_type {family!r} is not one of {sorted(VISION_SIZES)}")
    text = raw.setdefault("text_config", {}) if "text_config" in raw else raw  # Qwen2.5-VL: text keys at the top
    text.update(TEXT_SIZES)
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(text.get(key), dict) and "mrope_section" in text[key]:
            text[key] = {**text[key], "mrope_section": _scaled_sections(text[key]["mrope_section"])}
    raw["vision_config"] = {**raw["vision_config"], **VISION_SIZES[family], **vision_sizes}
    return AutoConfig.for_model(**raw)


def build_tiny_qwen(folder: str | Path, seed: int = 0, attn_implementation: str = "sdpa", processor=None,
                    **vision_sizes):
    """(model, processor): the shrunk random-weight model (float32, eval) and the folder's real processor
    (image-only where the video processor needs torchvision; `processor`: one already loaded)."""
    from vlminterp.models.adapters import adapter_class_for_config

    config = tiny_qwen_config(folder, **vision_sizes)
    adapter_class = adapter_class_for_config(config)
    torch.manual_seed(seed)
    model = adapter_class.model_class()(config).float().eval()  # float32 whatever the config's dtype says
    model.set_attn_implementation({"text_config": attn_implementation, "vision_config": "sdpa"})
    if processor is None:
        processor = adapter_class.load_processor(str(folder))
    return model, processor
