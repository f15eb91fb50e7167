"""Synthetic logit-lens tables and images for the lens HTML tests (no model needed).

    from lensfixtures import synthetic_lens, NASTY_TOKENS
    table, image, boxes, obj = synthetic_lens(rows=4, cols=4, layers=5, k=5, size=(300, 200))
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from vlminterp.geometry import uniform_cell_boxes

# tokens a decoder can produce that would break a naive page
NASTY_TOKENS = [
    "</script><img src=x onerror=alert(1)>",
    "&amp;",
    '"quotes" & \'apostrophes\'',
    "<!--",
    "-->",
    "🐶 dog",
    " leading space",
    "\u2028sep\u2029",
    "${x}`",
    "\\u003c",
]
PLAIN = ["the", " cat", " dog", "ing", " on", " a", " grass", " sky", "ball", " red", "▁tree"]


def crop_boxes(width: int, height: int, rows: int, cols: int) -> np.ndarray:
    """Cell boxes for a centre crop of a landscape image (W > H): borders left uncovered."""
    side = min(width, height)
    return uniform_cell_boxes(((width - side) / 2, (height - side) / 2,
                               (width + side) / 2, (height + side) / 2), rows, cols)


def pad_boxes(width: int, height: int, rows: int, cols: int) -> np.ndarray:
    """Cell boxes for padding to a square: the boxes reach past the image borders."""
    side = max(width, height)
    return uniform_cell_boxes(((width - side) / 2, (height - side) / 2,
                               (width + side) / 2, (height + side) / 2), rows, cols)


def synthetic_image(width: int, height: int) -> Image.Image:
    """A smooth, recognisable picture (gradient + a disc) so screenshots are readable."""
    y, x = np.mgrid[0:height, 0:width]
    r = (255 * x / max(1, width - 1)).astype(np.uint8)
    g = (255 * y / max(1, height - 1)).astype(np.uint8)
    b = np.full_like(r, 160)
    img = np.stack([r, g, b], axis=-1)
    disc = (x - width * 0.55) ** 2 + (y - height * 0.5) ** 2 < (min(width, height) * 0.25) ** 2
    img[disc] = (250, 240, 60)
    return Image.fromarray(img, "RGB")


def synthetic_lens(rows: int = 4, cols: int = 4, layers: int = 5, k: int = 5,
                   size: tuple[int, int] = (300, 200), geometry: str = "crop",
                   image_id: int = 1, first_position: int = 5, nasty: bool = True,
                   seed: int = 0):
    """(table, image, cell_boxes, object_cells) for one image, row-major positions.

    With `nasty`, NASTY_TOKENS[i] is the top-1 token at (position index i, layer 1) and the
    rank-2 token at layer 0, so each shows both in the table and in a tooltip.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    boxes = (crop_boxes if geometry == "crop" else pad_boxes)(width, height, rows, cols)
    obj = np.zeros((rows, cols), dtype=bool)
    obj[rows // 2 - 1: rows // 2 + 1, cols // 2 - 1: cols // 2 + 1] = True
    n_pos = rows * cols
    pos = np.repeat(np.arange(n_pos), layers * k)
    lay = np.tile(np.repeat(np.arange(layers), k), n_pos)
    rank = np.tile(np.arange(1, k + 1), n_pos * layers)
    raw = rng.dirichlet(np.ones(k + 3), size=n_pos * layers)[:, :k]
    probs = -np.sort(-raw, axis=1).ravel()
    tokens = np.array(PLAIN, dtype=object)[rng.integers(0, len(PLAIN), size=len(pos))]
    if nasty:
        for i, tok in enumerate(NASTY_TOKENS[:n_pos]):
            tokens[(i * layers + min(1, layers - 1)) * k] = tok
            if k > 1:
                tokens[(i * layers) * k + 1] = tok
    table = pd.DataFrame({
        "image_id": image_id,
        "layer": lay,
        "position": first_position + pos,
        "cell_row": pos // cols,
        "cell_col": pos % cols,
        "rank": rank,
        "token": tokens.astype(str),
        "prob": probs,
    })
    return table, synthetic_image(width, height), boxes, obj
