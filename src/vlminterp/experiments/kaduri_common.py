"""Object masks of the Kaduri et al. stages on the model's image tokens (K3).

    mask = category_mask(dataset, image_id, "dog")                 # union of the category's masks
    selected, reason = object_tokens(adapter, mask, geometry)      # (N,) bool over the image tokens

The images, the text and the description's attention the K stages share live in `kaduri_images`,
`kaduri_text` and `description_attention`; the session in `experiments.session`.
"""
from __future__ import annotations

import numpy as np

from vlminterp.data.cells import exclusion_reason, mask_tokens
from vlminterp.data.coco import CocoDataset
from vlminterp.models.adapters import VLMAdapter


def category_mask(dataset: CocoDataset, image_id: int, category: str) -> np.ndarray:
    """Union of the masks of every instance of `category` in the image (crowd included)."""
    info = dataset.image_info(image_id)
    mask = np.zeros((info["height"], info["width"]), dtype=bool)
    for ann in dataset.annotations_of(image_id):
        if dataset.category_name(ann["category_id"]) == category:
            mask |= dataset.annotation_mask(ann["id"])
    return mask


def object_tokens(adapter: VLMAdapter, mask: np.ndarray, geometry: str | None = None,
                  min_overlap: float = 0.0) -> tuple[np.ndarray, str]:
    """((N,) bool over the image's tokens (image-token order), exclusion reason): the tokens whose
    box holds a mask pixel (covers more than `min_overlap` of it), through the adapter's exact
    geometry (`adapter.image_cells` of the mask's (width, height); any family: InternVL's tiles and
    thumbnail alike, Qwen2-VL's dynamic grid; for LLaVA its grid's cells, row-major). The reason is
    "" when some token holds the object, else why none does (`data.cells.exclusion_reason`, e.g.
    "object outside the crop")."""
    height, width = mask.shape
    overlap, selected = mask_tokens(mask, adapter.image_cells((width, height), geometry).pixel_boxes, min_overlap)
    return selected, exclusion_reason(mask, overlap, selected)


def mask_cells(adapter: VLMAdapter, mask: np.ndarray, geometry: str | None = None,
               min_overlap: float = 0.0) -> np.ndarray:
    """The tokens of `object_tokens` alone."""
    return object_tokens(adapter, mask, geometry, min_overlap)[0]
