"""A tiny random-weight Idefics3 built from the real SmolVLM-256M-Instruct config.json, shrunk (tests, the
compatibility table): the real processor and tokenizer, the real image geometry (512 px tiles of 16 px
patches, pixel shuffle by 4: 64 tokens per tile, tiles plus a global image), at a tiny width.

    model, processor = build_tiny_idefics3("../shared/fixtures/processors/HuggingFaceTB--SmolVLM-256M-Instruct")

`max_longest_edge` (default 1024) lowers the processor's resize target (2048 in the checkpoint) so a
COCO image gives 2 x 2 (or 2 x 1) tiles plus the global image instead of 4 x 3 plus one: the same
layout rules, 320 image tokens instead of 832. A processor passed in is used as it is.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16)
VISION_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


def tiny_idefics3_config(folder: str | Path):
    """The folder's config.json with the text and vision towers shrunk (geometry, token ids, scale kept)."""
    from transformers import Idefics3Config

    path = Path(folder) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no Idefics3 config.json in {folder}")
    raw = json.loads(path.read_text())
    kept = lambda part: {k: v for k, v in part.items() if k != "torch_dtype"}  # bf16 there: float32 here
    raw["text_config"] = {**kept(raw.get("text_config", {})), **TEXT_SIZES}
    raw["vision_config"] = {**kept(raw.get("vision_config", {})), **VISION_SIZES}
    return Idefics3Config(**{k: v for k, v in kept(raw).items() if k not in ("architectures", "transformers_version")})


def build_tiny_idefics3(folder: str | Path, seed: int = 0, attn_implementation: str = "sdpa", processor=None,
                        max_longest_edge: int | None = 1024):
    """(model, processor): the shrunk random-weight model (float32, eval) and the folder's real processor
    (`processor`: one already loaded; `max_longest_edge`: the processor's resize target, None = the
    checkpoint's)."""
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    config = tiny_idefics3_config(folder)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.set_attn_implementation({"text_config": attn_implementation, "vision_config": "sdpa"})
    if processor is None:
        processor = AutoProcessor.from_pretrained(str(folder))
        if max_longest_edge is not None:
            processor.image_processor.size = {"longest_edge": int(max_longest_edge)}
    return model, processor
