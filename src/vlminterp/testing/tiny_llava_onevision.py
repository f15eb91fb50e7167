"""LLaVA-OneVision's real processor (no fixture of its own) and a tiny random-weight model of the real
config shape, shrunk (tests, the compatibility table).

    processor = build_onevision_processor("../shared/fixtures/processors/Qwen--Qwen2-VL-2B")
    model, processor = build_tiny_llava_onevision("../shared/fixtures/processors/Qwen--Qwen2-VL-2B")

The processor is transformers' own `LlavaOnevisionProcessor` (images only: its video processor needs
torchvision) over
- the tokenizer of llava-hf/llava-onevision-qwen2-7b-ov-hf as transformers' conversion script
  (models/llava_onevision/convert_llava_onevision_weights_to_hf.py) builds it: Qwen2-7B-Instruct's
  tokenizer (the vocab.json / merges.txt that Qwen2-VL-2B shares, byte-identical: see the fixtures'
  processors/SOURCES.md; `<|endoftext|>` 151643, `<|im_start|>` 151644, `<|im_end|>` 151645) plus the
  special tokens `<image>` (151646) and `<video>` (151647), the config's image/video token ids;
- the image processor and processor settings of IMAGE_PROCESSOR / PROCESSOR below.
"""
from __future__ import annotations

from pathlib import Path

import torch

# llava-hf/llava-onevision-qwen2-7b-ov-hf's image processor. Sources: the conversion script builds it
# with `LlavaOnevisionImageProcessor.from_pretrained("google/siglip-so400m-patch14-384")` (the
# checkpoint's mm_vision_tower): SigLIP's preprocessor gives the size, resampling, rescaling and its
# 0.5 mean / std; every other value is the class default of transformers 5.23's
# `LlavaOnevisionImageProcessorPil` (the 36 image_grid_pinpoints, 384..2304 px in steps of 384, equal
# to `LlavaOnevisionConfig`'s default, whose docstring names this checkpoint).
IMAGE_PROCESSOR = dict(
    size={"height": 384, "width": 384},
    resample=3,  # bicubic
    do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True, do_pad=True,
    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    image_grid_pinpoints=[[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)],
)
# The processor's settings (the conversion script's `LlavaOnevisionProcessor(..., num_image_tokens=729,
# vision_feature_select_strategy="full", chat_template=...)`; vision_aspect_ratio: the class default).
PROCESSOR = dict(num_image_tokens=729, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
TOKENS = ("<|im_start|>", "<|im_end|>", "<image>", "<video>")  # added after <|endoftext|>, in this order

# The real model's shape: the text model is Qwen2-7B-Instruct's config (the conversion script's
# text_config), the vision tower the script's SiglipVisionConfig, the rest LlavaOnevisionConfig's defaults.
TEXT_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152128, max_position_embeddings=32768, rope_theta=1000000.0,
               rms_norm_eps=1e-6, hidden_act="silu", bos_token_id=151643, eos_token_id=151645,
               tie_word_embeddings=False, pad_token_id=151643)  # pad: the tokenizer's (<|endoftext|>)
VISION_7B = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                 image_size=384, patch_size=14, vision_use_head=False)
# Shrunk sizes (the geometry, vocabulary and token ids kept).
TEXT_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=8)
VISION_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


def build_onevision_tokenizer(qwen2_folder: str | Path):
    """Qwen2's tokenizer from the folder's vocab.json + merges.txt with OneVision's special tokens."""
    from transformers import AddedToken, Qwen2Tokenizer

    folder = Path(qwen2_folder)
    for name in ("vocab.json", "merges.txt"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"no Qwen2 tokenizer file {name} in {folder}")
    tokenizer = Qwen2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), unk_token=None)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in TOKENS], special_tokens=True)
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def build_onevision_processor(qwen2_folder: str | Path):
    """transformers' `LlavaOnevisionProcessor` (images only) with the 7b-ov-hf settings above."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)

    from vlminterp.models.adapters.llava_onevision import ImageOnlyLlavaOnevisionProcessor

    return ImageOnlyLlavaOnevisionProcessor(image_processor=LlavaOnevisionImageProcessorPil(**IMAGE_PROCESSOR),
                                            tokenizer=build_onevision_tokenizer(qwen2_folder), video_processor=None,
                                            **PROCESSOR)


def tiny_llava_onevision_config(**text_sizes):
    """The 7B config with the text and vision towers shrunk (`text_sizes` override TEXT_SIZES)."""
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **TEXT_7B, **TEXT_SIZES, **text_sizes},
        vision_config={"model_type": "siglip_vision_model", **VISION_7B, **VISION_SIZES},
        image_grid_pinpoints=IMAGE_PROCESSOR["image_grid_pinpoints"],
    )


def build_tiny_llava_onevision(qwen2_folder: str | Path, seed: int = 0, attn_implementation: str = "sdpa",
                               processor=None, **text_sizes):
    """(model, processor): the shrunk random-weight model (float32, eval) and the real processor
    (`processor`: one already built, to save the tokenizer's build)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(tiny_llava_onevision_config(**text_sizes)).eval()
    model.set_attn_implementation({"text_config": attn_implementation, "vision_config": "sdpa"})
    return model, processor if processor is not None else build_onevision_processor(qwen2_folder)
