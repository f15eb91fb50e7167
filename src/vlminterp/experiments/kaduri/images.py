"""The images every Kaduri et al. stage (K1-K4) reads: a seeded sample of a split's annotated images.

    images = select_images(dataset, n_images=30, seed=0)     # image_id, file_name, width, height, categories
    write_table(images, "results/run/kaduri/images.csv"); images = load_images_table(path)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vlminterp.data.coco import CocoDataset

IMAGE_COLUMNS = ("image_id", "file_name", "width", "height", "categories")
LIST_SEPARATOR = ";"


def select_images(dataset: CocoDataset, n_images: int, seed: int) -> pd.DataFrame:
    """`n_images` annotated images of the split, a seeded sample in a fixed order (all if fewer).

    Columns IMAGE_COLUMNS; `categories` is the ";"-joined sorted set of category names present.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    ids = [i for i in dataset.image_ids() if dataset.annotations_of(i)]
    order = np.random.default_rng(seed).permutation(len(ids))[:n_images]
    names = dataset.category_names()
    rows = []
    for index in order:
        image_id = ids[int(index)]
        info = dataset.image_info(image_id)
        categories = sorted({names[c] for c in dataset.image_categories(image_id)})
        rows.append({"image_id": int(image_id), "file_name": info["file_name"], "width": int(info["width"]),
                     "height": int(info["height"]), "categories": LIST_SEPARATOR.join(categories)})
    return pd.DataFrame(rows, columns=list(IMAGE_COLUMNS))


def load_images_table(path: str | Path) -> pd.DataFrame:
    from vlminterp.io import read_table

    table = read_table(path)
    table["categories"] = table["categories"].fillna("")
    return table
