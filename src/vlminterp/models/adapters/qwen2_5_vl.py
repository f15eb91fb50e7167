"""Adapter for `Qwen2_5_VLForConditionalGeneration` (Qwen/Qwen2.5-VL-*-Instruct; a tiny random-weight
model built from the real config in the tests, `testing.tiny_qwen`).

    adapter = Qwen2_5_VLAdapter(model, processor)      # everything as Qwen2-VL's (qwen2_vl.py)
    positions = adapter.rope_positions(input_ids, image_grid_thw=...)   # the model's own M-RoPE ids

What differs from Qwen2-VL, and why the Qwen2-VL adapter's code serves it unchanged:
- the vision tower attends within windows of `window_size` px (112: 4 x 4 tokens) except in its
  `fullatt_block_indexes` layers; it reorders the patches into windows and back inside
  `get_image_features`, so its output is in the processor's token order (row-major, one 2 x 2
  patch block per token) exactly as Qwen2-VL's: the geometry is `smart_resize`'s grid, 28 px.
- M-RoPE time ids are absolute (`tokens_per_second` x seconds per video frame): for a still image
  the time id is the image's start position for every token, as in Qwen2-VL.
- the projector is `visual.merger` (RMSNorm + MLP), the text model Qwen2's.

Trap (tested): a forward on `inputs_embeds` without `position_ids`, or on `input_ids` without
`mm_token_type_ids`, silently falls back to 1-D positions 0..T-1. The engine always passes the
model's own 3-D ids (`rope_positions`); `model_inputs` always passes `mm_token_type_ids`.
"""
from __future__ import annotations

from transformers import Qwen2_5_VLProcessor

from .processor import ImageOnlyProcessorMixin, load_image_only_processor
from .qwen2_vl import Qwen2VLAdapter


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_class_name = "Qwen2_5_VLForConditionalGeneration"

    @classmethod
    def load_processor(cls, id_or_path: str, **kwargs):
        """AutoProcessor, or an image-only `ImageOnlyQwen2_5_VLProcessor` where the video processor needs torchvision."""
        return load_image_only_processor(ImageOnlyQwen2_5_VLProcessor, id_or_path, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(ImageOnlyProcessorMixin, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` that may be built without a video processor (images only)."""
