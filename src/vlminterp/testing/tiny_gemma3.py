"""A tiny random-weight Gemma 3 built from the real checkpoint's config.json, shrunk (tests, the
compatibility table): the real processor and tokenizer, the real image geometry (896 px, 14 px
patches, 256 image tokens), the real layer pattern (sliding and global layers) at a tiny width.

    model, processor = build_tiny_gemma3("../shared/fixtures/processors/google--gemma-3-4b-it")

Gemma 3's initialisation zeroes the projector's matrix (`mm_input_projection_weight`): every image
feature would be 0 and every image ablation vacuous. It is redrawn here (seeded, std 1 / sqrt(width)).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

# Shrunk sizes: the window is far below the ~275-token prompt so sliding layers differ from global ones.
TEXT_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16, sliding_window=8,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
VISION_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


def real_config_dict(folder: str | Path, what: str) -> dict:
    """The folder's config.json as a dict, without the keys no config class takes (`what` names the
    family in the error when it is absent)."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no {what} config.json in {folder}")
    raw = json.loads(path.read_text())
    return {k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")}


def tiny_gemma3_config(folder: str | Path, **text_sizes):
    """The folder's config.json with the text and vision towers shrunk (geometry and token ids kept);
    `text_sizes` override TEXT_SIZES (e.g. sliding_window=512)."""
    from transformers import Gemma3Config

    raw = real_config_dict(folder, "Gemma 3")
    raw["text_config"] = {**raw.get("text_config", {}), **TEXT_SIZES, **text_sizes}
    raw["vision_config"] = {**raw.get("vision_config", {}), **VISION_SIZES}
    return Gemma3Config(**raw)


def build_tiny_gemma3(folder: str | Path, seed: int = 0, attn_implementation: str = "sdpa", processor=None,
                      **text_sizes):
    """(model, processor): the shrunk random-weight model (float32, eval) and the folder's real processor
    (`processor`: one already loaded from that folder; loading its 33 MB tokenizer takes seconds)."""
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    config = tiny_gemma3_config(folder, **text_sizes)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    # the text model's backend (the one the interventions patch); the 4096-patch vision tower stays on sdpa
    model.set_attn_implementation({"text_config": attn_implementation, "vision_config": "sdpa"})
    projection = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 1)
        projection.copy_(torch.randn(projection.shape, generator=generator) / projection.shape[0] ** 0.5)
    return model, processor if processor is not None else AutoProcessor.from_pretrained(str(folder))
