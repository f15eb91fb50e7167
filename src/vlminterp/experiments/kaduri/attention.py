"""K1 (Kaduri et al.): where the generated tokens' attention goes, per layer and token group.

    table = attention_fractions(session, images, AttentionFractionSpec(per_head=True))
    summary = summarize_attention_fractions(table, seed=0)    # over images, heads averaged

Generates each image's description, reads the attention rows that produced it in one extra
forward pass (`description_attention`) and splits each row over the key groups KEY_GROUPS.
Protocol and columns: docs/PROTOCOLS.md, "K1. Where the generated tokens attend".
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vlminterp.stats import bootstrap_ci
from vlminterp.experiments.kaduri.specs import KEY_GROUPS, AttentionFractionSpec  # noqa: F401  (light)

if TYPE_CHECKING:  # loads torch and transformers: the stage's functions get an open session
    from vlminterp.experiments.shared.session import Session

log = logging.getLogger(__name__)

ATTENTION_COLUMNS = ("image_id", "layer", "head", "group", "mean", "std", "n_tokens", "key_share", "n_generated")
MEAN_HEAD = -1


def key_shares(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n_rows, n_groups): each group's share of the keys 0..p of each row position p."""
    onehot = np.stack([labels == g for g in KEY_GROUPS], axis=1).astype(np.float64)
    cumulative = np.cumsum(onehot, axis=0)
    return cumulative[rows] / (rows[:, None] + 1)


def image_attention_fractions(session: Session, image_id: int, spec: AttentionFractionSpec) -> list[dict]:
    """Rows of the K1 table for one image."""
    import torch

    item = session.encode(image_id)
    generated = session.describe(item)
    record = session.description_attention(item, generated)
    P = item.prompt_length
    rows = record.rows(0).numpy()
    counted = rows >= (P - 1 if spec.include_prefill_row else P)  # P-1: the prefill's last row
    if not counted.any():
        log.warning("image %s: the description has %d token(s), no row to report", image_id, len(generated))
        return []
    positions = rows[counted]
    shares = key_shares(item.groups.labels(int(positions.max()) + 1), positions).mean(axis=0)
    out = []
    for layer in range(session.adapter.n_layers):
        mass = record.groups_of_layer(layer)[:, torch.as_tensor(counted)].double().numpy()  # (H, n, G)
        heads = [(MEAN_HEAD, mass.mean(axis=0))]
        if spec.per_head:
            heads += [(h, mass[h]) for h in range(mass.shape[0])]
        for head, values in heads:
            means, stds = values.mean(axis=0), values.std(axis=0)
            for g, group in enumerate(KEY_GROUPS):
                out.append({"image_id": int(image_id), "layer": layer, "head": head, "group": group,
                            "mean": float(means[g]), "std": float(stds[g]), "n_tokens": int(counted.sum()),
                            "key_share": float(shares[g]), "n_generated": len(generated)})
    return out


def attention_fractions(session: Session, images: pd.DataFrame, spec: AttentionFractionSpec) -> pd.DataFrame:
    """The K1 table (module docstring) for every image of `images` (column image_id)."""
    rows = []
    for n, image_id in enumerate(images["image_id"], 1):
        rows.extend(image_attention_fractions(session, int(image_id), spec))
        log.info("K1: image %d/%d (id %s)", n, len(images), image_id)
    return pd.DataFrame(rows, columns=list(ATTENTION_COLUMNS))


def summarize_attention_fractions(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per layer and group (heads averaged): mean over images of the per-image means, a bootstrap
    95% interval over images, the spread (std over images, mean within-image std over tokens),
    the mean key share and the number of images."""
    data = table[table["head"] == MEAN_HEAD]
    rows = []
    for (layer, group), part in data.groupby(["layer", "group"], sort=True):
        low, high = bootstrap_ci(part["mean"].to_numpy(), seed=seed)
        rows.append({"layer": int(layer), "group": group, "mean": float(part["mean"].mean()), "low": low, "high": high,
                     "std_images": float(part["mean"].std(ddof=0)), "std_tokens": float(part["std"].mean()),
                     "key_share": float(part["key_share"].mean()), "n_images": int(part["image_id"].nunique())})
    out = pd.DataFrame(rows, columns=["layer", "group", "mean", "low", "high", "std_images", "std_tokens",
                                      "key_share", "n_images"])
    order = {g: i for i, g in enumerate(KEY_GROUPS)}
    return out.sort_values(["layer", "group"], key=lambda c: c.map(order) if c.name == "group" else c,
                           ignore_index=True)
