"""Painted-image helpers for adapter geometry tests: paint boxes in distinct colours, read colours back.

    palette = distinct_colours(n)
    index = colour_index(read_colours, n)                # palette index of each read colour
    image = paint((width, height), boxes, palette)      # box i painted in palette[i] (pixel centres inside)
    adapter_for_meta(variant)                           # an adapter on a meta-device model (config + processor)
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def _levels(n: int) -> np.ndarray:
    return np.linspace(20, 235, max(2, math.ceil(n ** (1 / 3) - 1e-9))).round()


def distinct_colours(n: int) -> np.ndarray:
    """n colours (0..255) on a regular grid of the RGB cube (index = (r * L + g) * L + b in levels)."""
    values = _levels(n)
    grid = np.stack(np.meshgrid(values, values, values, indexing="ij"), -1).reshape(-1, 3)
    return grid[:n]


def colour_index(colours: np.ndarray, n: int) -> np.ndarray:
    """Index into `distinct_colours(n)` of the nearest colour, per channel (fast for large palettes)."""
    values = _levels(n)
    level = np.abs(colours[..., None] - values).argmin(-1)  # (..., 3)
    count = len(values)
    return (level[..., 0] * count + level[..., 1]) * count + level[..., 2]


def paint(size: tuple[int, int], boxes: np.ndarray, palette: np.ndarray) -> Image.Image:
    """Black image of `size` (width, height) with every pixel whose centre lies in box i set to palette[i]."""
    width, height = size
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for box, colour in zip(boxes, palette):
        if np.isnan(box).any():
            continue
        # pixel j is inside [x0, x1) when x0 <= j + 0.5 < x1
        x0, x1 = math.ceil(box[0] - 0.5), math.ceil(box[2] - 0.5)
        y0, y1 = math.ceil(box[1] - 0.5), math.ceil(box[3] - 0.5)
        image[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = colour
    return Image.fromarray(image)


def unnormalize(pixels: np.ndarray, image_processor) -> np.ndarray:
    """Channel-first normalized pixels back to 0..255."""
    mean = np.array(image_processor.image_mean).reshape(3, *([1] * (pixels.ndim - 1)))
    std = np.array(image_processor.image_std).reshape(3, *([1] * (pixels.ndim - 1)))
    return (pixels * std + mean) * 255


def corner_offsets(side: int, inset: int) -> list[tuple[int, int]]:
    """(dy, dx) of four points `inset` pixels inside the corners of a side x side square."""
    lo, hi = inset, side - 1 - inset
    return [(lo, lo), (lo, hi), (hi, lo), (hi, hi)]


def adapter_for_meta(variant: str, resample=None):
    """The family adapter of a synthetic variant on a meta-device model (geometry needs no weights)."""
    from vlminterp.models.adapters import adapter_class_for_config
    from vlminterp.testing.synthetic import build_processor, synthetic_config

    processor = build_processor(variant)
    if resample is not None:
        processor.image_processor.resample = resample
    config = synthetic_config(variant)
    adapter_class = adapter_class_for_config(config)
    with torch.device("meta"):
        model = adapter_class.model_class()(config)
    return adapter_class(model, processor), processor
