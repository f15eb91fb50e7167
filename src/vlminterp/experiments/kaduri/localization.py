"""K3 (Kaduri et al.): does a generated object word attend to the object, per layer?

    table = localization(session, images, LocalizationSpec())   # one row per mention x layer x head
    per_layer = summarize_localization(table, seed=0)           # accuracy per layer with intervals
    per_band = summarize_localization(table, band_width=8)      # ... per band of layers
    per_eighth = summarize_localization(table, depth=True)      # ... per eighth of the depth

Finds each description's object mentions (matched as the offline judge matches them), reads the
attention row of each mention's first token over the image tokens per layer and scores its peak
against the object's tokens and, as the null control, another image's object. Protocol and
columns: docs/PROTOCOLS.md, "K3. Localization".
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vlminterp.experiments.kaduri.text import token_mentions, token_spans
from vlminterp.geometry import category_mask, object_tokens, token_distance
from vlminterp.stats import cluster_bootstrap_ci, excluded_counts
from vlminterp.experiments.kaduri.specs import (  # noqa: F401  (the settings live in a light module)
    ROW_KINDS, SCOPES, LocalizationSpec)

if TYPE_CHECKING:  # loads torch and transformers: the stage's functions get an open session
    from vlminterp.experiments.shared.session import Session

log = logging.getLogger(__name__)

LOCALIZATION_COLUMNS = ("image_id", "mention", "category", "surface", "token_index", "position", "row_kind",
                        "disappears", "layer", "head", "peak_cell", "peak_tile", "peak_row", "peak_col",
                        "peak_attention", "image_mass", "distance", "hit", "n_object_cells", "chance", "tolerance",
                        "permuted_image_id", "permuted_category", "hit_permuted", "chance_permuted", "excluded")
MEAN_HEAD = -1


def image_localization(session: Session, image_id: int, present: set[str], spec: LocalizationSpec) -> list[dict]:
    """Rows of the K3 table for one image (`present`: its annotated categories)."""
    item = session.encode(image_id)
    generated = session.describe(item)
    text, spans = token_spans(session.tokenizer, generated)
    P, n = item.prompt_length, len(generated)
    kept_without_image = knocked_out_categories(session, item)
    mentions = []
    for index, mention in enumerate(token_mentions(text, spans, session.vocabulary)):
        if mention.category not in present:
            continue
        if spec.scope == "disappearing" and mention.category in kept_without_image:
            continue
        t = mention.first_token
        position = P + t if spec.attention_row == "token" else P - 1 + t
        if position > P + n - 2:
            log.info("image %s: mention %r is the last token, never read back: skipped", image_id, mention.surface)
            continue
        mentions.append((index, mention, position))
    if not mentions:
        return []
    record = session.description_attention(item, generated, image_rows=[p for _, _, p in mentions])
    layout = session.adapter.image_cells(item.size, session.prompt.geometry)
    if layout.num_tokens != len(item.groups.image):
        raise ValueError(f"K3 localization, {session.adapter.family}: image {image_id} has {len(item.groups.image)} "
                         f"image tokens in the prompt but {layout.num_tokens} in the adapter's cell geometry")
    out = []
    for index, mention, position in mentions:
        cells, excluded = object_tokens(session.adapter, category_mask(session.dataset, image_id, mention.category),
                                        session.prompt.geometry, spec.min_overlap)
        common = {"image_id": int(image_id), "mention": index, "category": mention.category,
                  "surface": mention.surface, "token_index": mention.first_token, "position": position,
                  "row_kind": spec.attention_row, "disappears": mention.category not in kept_without_image}
        if excluded:
            log.info("image %s: mention %r excluded (%s)", image_id, mention.surface, excluded)
            out.append({**common, "layer": -1, "head": MEAN_HEAD, "peak_cell": -1, "peak_tile": -1, "peak_row": -1,
                        "peak_col": -1, "peak_attention": np.nan, "image_mass": np.nan, "distance": np.nan,
                        "hit": False, "n_object_cells": 0, "chance": np.nan, "tolerance": spec.tolerance,
                        **_permuted_hit(None, -1, spec.tolerance), "excluded": excluded})
            continue
        distance = token_distance(layout, cells)
        chance = float(np.mean(distance <= spec.tolerance))
        permuted = permuted_label(session, image_id, index, spec, layout)
        for layer in range(session.adapter.n_layers):
            attention = record.image_row(layer, position).double().numpy()  # (H, n_image)
            heads = [(MEAN_HEAD, attention.mean(axis=0))]
            if spec.per_head:
                heads += [(h, attention[h]) for h in range(attention.shape[0])]
            for head, row in heads:
                peak = int(np.argmax(row))
                out.append({
                    **common, "layer": layer, "head": head, "peak_cell": peak,
                    "peak_tile": int(layout.tile[peak]), "peak_row": int(layout.row[peak]),
                    "peak_col": int(layout.col[peak]),
                    "peak_attention": float(row[peak]), "image_mass": float(row.sum()),
                    "distance": float(distance[peak]), "hit": bool(distance[peak] <= spec.tolerance),
                    "n_object_cells": int(cells.sum()), "chance": chance, "tolerance": spec.tolerance,
                    **_permuted_hit(permuted, peak, spec.tolerance), "excluded": ""})
    return out


def permuted_label(session: Session, image_id: int, mention: int, spec: LocalizationSpec, layout):
    """(other image id, category, token distances to its object) for the null control (module
    docstring), or None when no other image has an object with tokens on this image's grid."""
    dataset = session.dataset
    others = [int(i) for i in dataset.image_ids() if int(i) != int(image_id)]
    rng = np.random.default_rng([int(image_id), int(mention)])
    for other in (others[int(k)] for k in rng.permutation(len(others))[:20]):
        names = sorted({dataset.category_name(a["category_id"]) for a in dataset.annotations_of(other)})
        for name in names:
            cells, excluded = object_tokens(session.adapter, category_mask(dataset, other, name),
                                            session.prompt.geometry, spec.min_overlap)
            if excluded or len(cells) != layout.num_tokens:
                continue
            return other, name, token_distance(layout, cells)
    return None


def _permuted_hit(permuted, peak: int, tolerance: int) -> dict:
    if permuted is None:
        return {"permuted_image_id": -1, "permuted_category": "", "hit_permuted": np.nan, "chance_permuted": np.nan}
    other, name, distance = permuted
    return {"permuted_image_id": other, "permuted_category": name, "hit_permuted": float(distance[peak] <= tolerance),
            "chance_permuted": float(np.mean(distance <= tolerance))}


def knocked_out_categories(session: Session, item) -> set[str]:
    """Categories the description still names when the generated tokens never see the image (K2's
    image->generated: every layer, decode steps only)."""
    from vlminterp.interventions import Condition, From, Knockout

    blind = Condition(knockouts=(Knockout(From(item.prompt_length), list(item.groups.image_span)),),
                      label="image->generated")
    tokens = session.engine.generate(item.prepared, [blind], session.prompt.description_tokens,
                                     session.eos_token_ids).tokens[0]
    return {m.category for m in session.vocabulary.find(session.decode(tokens))}


def localization(session: Session, images: pd.DataFrame, spec: LocalizationSpec) -> pd.DataFrame:
    """The K3 table (module docstring) for every image of `images` (image_id, categories); the
    session's vocabulary finds the mentions."""
    rows = []
    for n, (image_id, categories) in enumerate(zip(images["image_id"].astype(int), images["categories"].fillna("")), 1):
        present = {c for c in str(categories).split(";") if c}
        rows.extend(image_localization(session, image_id, present, spec))
        log.info("K3: image %d/%d (id %s)", n, len(images), image_id)
    return pd.DataFrame(rows, columns=list(LOCALIZATION_COLUMNS))


#: K3's bands of depth: the eighths of the model's layers (band b: layers l with b <= 8 l / n_layers
#: < b + 1), each the same fraction of the depth as 10 layers of InternVL2-76B's 80 (the paper's bands).
DEPTH_BANDS, DEPTH_GROUPING = 8, "eighth of the depth"


def depth_band(layers: pd.Series) -> pd.Series:
    """Each layer's eighth of the depth (DEPTH_BANDS), the depth being the highest layer given + 1."""
    return (DEPTH_BANDS * layers) // (int(layers.max()) + 1) if len(layers) else layers


def scored_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows K3's accuracy reads: the heads' mean, excluded mentions left out."""
    if "excluded" in table:
        table = table[table["excluded"].fillna("") == ""]
    return table[table["head"] == MEAN_HEAD]


def summarize_localization(table: pd.DataFrame, seed: int = 0, band_width: int | None = None,
                           depth: bool = False) -> pd.DataFrame:
    """Accuracy (heads averaged) per layer, per band of `band_width` layers, or (`depth`) per
    eighth of the depth (`depth_band`), over mentions (each mention's hits averaged over the band's
    layers first), with a 95% bootstrap interval that resamples images (the mentions of one
    description are not independent), and chance; excluded mentions are left out and counted
    (n_excluded, the same on every row)."""
    n_excluded = sum(excluded_counts(table, unit=("image_id", "mention")).values())
    data = scored_rows(table).copy()
    data["band"] = depth_band(data["layer"]) if depth else data["layer"] // (band_width or 1)
    mention = ["image_id", "mention"]
    rows = []
    for band, part in data.groupby("band", sort=True):
        per_mention = part.groupby(mention)[["hit", "chance"]].mean()
        low, high = cluster_bootstrap_ci(per_mention["hit"].to_numpy(dtype=float),
                                         per_mention.index.get_level_values("image_id"), seed=seed)
        rows.append({"band": int(band), "layer_start": int(part["layer"].min()), "layer_end": int(part["layer"].max()),
                     "accuracy": float(per_mention["hit"].mean()), "low": low, "high": high,
                     "chance": float(per_mention["chance"].mean()), "n_mentions": len(per_mention),
                     "n_excluded": n_excluded,
                     "n_images": int(per_mention.index.get_level_values("image_id").nunique())})
    return pd.DataFrame(rows, columns=["band", "layer_start", "layer_end", "accuracy", "low", "high", "chance",
                                       "n_mentions", "n_excluded", "n_images"])


def accuracy_by_category(table: pd.DataFrame) -> pd.DataFrame:
    """K3 accuracy (heads averaged) per eighth of the depth (`band`, `depth_band`) and mentioned
    category, over mentions; columns band, category, value, n (mentions), n_images."""
    data = table[(table["layer"] >= 0) & (table["head"] == MEAN_HEAD)]
    rows = []
    for (band, category), part in data.assign(band=depth_band(data["layer"])).groupby(["band", "category"]):
        per_mention = part.groupby(["image_id", "mention"])["hit"].mean()
        rows.append({"band": int(band), "category": category, "value": float(per_mention.mean()),
                     "n": len(per_mention), "n_images": int(per_mention.index.get_level_values(0).nunique())})
    return pd.DataFrame(rows, columns=["band", "category", "value", "n", "n_images"])
