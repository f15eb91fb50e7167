"""Object masks to image tokens: which tokens hold an object (the Neo cell table built on this:
`experiments.shared.cells`).

    from vlminterp.geometry.objects import object_tokens, category_mask

    tokens, reason = object_tokens(adapter, category_mask(dataset, image_id, "dog"))   # K3

A mask (polygon, RLE or crowd RLE: `CocoDataset.annotation_mask`) is mapped onto the model's
image tokens through the adapter's geometry (`adapter.image_cells`: "crop" = the HF LLaVA
processor's centre crop, "pad" = the original LLaVA padding, "resize" = InternVL's tiles +
thumbnail and Qwen2-VL's dynamic grid): each token's box in the ORIGINAL image has exact rational
edges, the covered fraction is exact (`geometry.boxes.mask_tokens`), and a token is an object
token when that fraction exceeds `min_overlap` (0.0 = a mask pixel lies in its box). Buffer b
dilates the object's tokens with the 8-neighbourhood b times, within each tile. An object with no
object token is excluded, under one of the EXCLUDED_* reasons (`exclusion_reason`).
"""
from __future__ import annotations

import numpy as np

from .boxes import mask_tokens
from .tokens import ImageCells

# Why an object has no object token (a target of N1-N3, a mention of K3): such an object cannot be
# ablated, blocked or localized, and counting it would dilute every rate, so the experiments
# exclude it and count it under one of these reasons.
EXCLUDED_EMPTY_MASK = "empty mask"
EXCLUDED_OUTSIDE_CROP = "object outside the crop"
EXCLUDED_BELOW_MIN_OVERLAP = "no cell above min_overlap"


def exclusion_reason(mask: np.ndarray, overlap: np.ndarray, selected: np.ndarray) -> str:
    """"" when some token is selected; else why not: EXCLUDED_EMPTY_MASK (no mask pixel),
    EXCLUDED_OUTSIDE_CROP (no mask pixel in any token's box: under "crop" the object lies wholly
    in the part cut away) or EXCLUDED_BELOW_MIN_OVERLAP (`overlap`, `selected`: of `mask_tokens`)."""
    if np.asarray(selected).any():
        return ""
    if not np.asarray(mask).any():
        return EXCLUDED_EMPTY_MASK
    return EXCLUDED_BELOW_MIN_OVERLAP if (np.asarray(overlap) > 0).any() else EXCLUDED_OUTSIDE_CROP


def category_mask(dataset, image_id: int, category: str) -> np.ndarray:
    """Union of the masks of every instance of `category` in the image (crowd included)."""
    info = dataset.image_info(image_id)
    mask = np.zeros((info["height"], info["width"]), dtype=bool)
    for ann in dataset.annotations_of(image_id):
        if dataset.category_name(ann["category_id"]) == category:
            mask |= dataset.annotation_mask(ann["id"])
    return mask


def object_overlap(mask: np.ndarray, cells: ImageCells, min_overlap: float = 0.0) -> tuple[np.ndarray, np.ndarray, str]:
    """(overlap (N,), object tokens (N,) bool, exclusion reason) of one mask over one image's
    tokens: `mask_tokens` over the exact boxes of `cells`, and `exclusion_reason`."""
    overlap, selected = mask_tokens(mask, cells.pixel_boxes, min_overlap)
    return overlap, selected, exclusion_reason(mask, overlap, selected)


def object_tokens(adapter, mask: np.ndarray, geometry: str | None = None,
                  min_overlap: float = 0.0) -> tuple[np.ndarray, str]:
    """((N,) bool over the image's tokens (image-token order), exclusion reason): the tokens whose
    box holds a mask pixel (covers more than `min_overlap` of it), through the adapter's exact
    geometry (`adapter.image_cells` of the mask's (width, height); any family: InternVL's tiles and
    thumbnail alike, Qwen2-VL's dynamic grid; for LLaVA its grid's cells, row-major). The reason is
    "" when some token holds the object, else why none does (`exclusion_reason`, e.g.
    "object outside the crop")."""
    height, width = mask.shape
    _, selected, reason = object_overlap(mask, adapter.image_cells((width, height), geometry), min_overlap)
    return selected, reason
