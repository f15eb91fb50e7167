"""K3 (Kaduri et al.): does a generated object word attend to the object, per layer?

    spec = LocalizationSpec(tolerance=1, attention_row="predicting")   # config section kaduri.localization
    table = localization(session, images, spec)      # one row per mention x layer x head (session.vocabulary)
    per_layer = summarize_localization(table, seed=0)            # accuracy per layer with intervals
    per_band = summarize_localization(table, band_width=8)       # ... per band of layers

For each image: the unablated greedy description; its object mentions, matched exactly as the
offline judge matches them (`scoring.vocabulary`: names, plurals, synonyms), kept when the
category is annotated in the image; the mention's first generated token. `scope` picks the
mentions: "disappearing" (the paper's, as far as a secondary summary of it tells: the text of
arXiv 2411.17491 could not be read here; the authors' code has no localization script) keeps
those whose category the image->generated knockout's description (K2's condition, decoded for
the image) no longer names, the objects the generated tokens must read from the image
themselves; "all" keeps every mention. Every row says which (`disappears`). Its attention row over
the image tokens (`attention_row`: "token" = the row of that token read back during decoding,
position P+t; "predicting" = the row that produced it, P-1+t) is recorded per layer in one extra
forward pass (`description_attention`), per head and heads averaged. The peak cell is the image token
with the most attention. The object's cells are the tokens whose box its mask overlaps (all
instances of the category, `min_overlap` as in `geometry.object_cells`), through the adapter's
own per-token geometry (`adapter.image_cells`, so the same mapping the model's patches use).
Hit: the peak token lies within Chebyshev distance `tolerance` of an object token OF THE SAME
TILE (`geometry.token_distance`; distances never cross tiles). Single-grid families (LLaVA)
have one tile; InternVL's high-resolution tiles and its thumbnail are separate tiles, each
holding its own object tokens, so a peak on the object in the thumbnail is a hit as well;
Qwen2-VL has one grid whose shape depends on the image. Chance: the share of the image's tokens
that would be hits (the accuracy of a uniformly random peak).

Table columns: image_id, mention (index within the description), category, surface, token_index,
position (of the attention row), row_kind, disappears (the category is missing from the
image->generated knockout's description), layer, head (-1 = heads averaged), peak_cell (image
token index), peak_tile, peak_row, peak_col (its tile and cell in that tile's grid; tile 0 for
LLaVA), peak_attention, image_mass (attention on all image tokens), distance (to the nearest
object token of its tile, in cells; inf when that tile holds none), hit, n_object_cells (object
tokens over all tiles), chance, tolerance, and the null control (`permuted_label`): the same peak
scored against the object of ANOTHER image (permuted_image_id, permuted_category: an image of the
dataset drawn with a generator seeded by (image id, mention), its first annotated category, by name,
that has object tokens), hit_permuted and chance_permuted (that object's uniform-peak chance).
Attention that does not follow the object (e.g. a peak always in the centre where objects often
lie) scores hit_permuted above chance_permuted; NaN when the other image's token grid differs from
this image's (tiled families).
A mention on the description's last token under attention_row="token" has no decode row (the
token is never read back) and is skipped (logged).
Exclusion: a mention whose object has no object token (`geometry.object_tokens`; e.g. "object
outside the crop": every instance lies in the part the centre crop cuts away) cannot be localized;
it gets one row (layer -1, head -1, peak columns -1 or NaN, hit False) whose `excluded` column says
why, and `summarize_localization` leaves it out of the accuracy and counts it (n_excluded). Other
rows have `excluded` empty.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vlminterp.experiments.kaduri_text import token_mentions, token_spans
from vlminterp.experiments.session import Session
from vlminterp.geometry import category_mask, object_tokens, token_distance
from vlminterp.interventions import Condition, From, Knockout
from vlminterp.stats import cluster_bootstrap_ci, excluded_counts

log = logging.getLogger(__name__)

ROW_KINDS = ("token", "predicting")
SCOPES = ("disappearing", "all")
LOCALIZATION_COLUMNS = ("image_id", "mention", "category", "surface", "token_index", "position", "row_kind",
                        "disappears", "layer", "head", "peak_cell", "peak_tile", "peak_row", "peak_col",
                        "peak_attention", "image_mass", "distance", "hit", "n_object_cells", "chance", "tolerance",
                        "permuted_image_id", "permuted_category", "hit_permuted", "chance_permuted", "excluded")
MEAN_HEAD = -1


@dataclass(frozen=True)
class LocalizationSpec:
    """tolerance: Chebyshev cells; attention_row: "token" or "predicting"; min_overlap: a cell is
    an object cell when the mask covers more than this fraction of it; per_head: also write one
    row per head; scope: "disappearing" = only mentions whose category the image->generated
    knockout removes from the description, "all" = every one; band_width: layers per band of the
    summary (`summarize_localization`). The description cap is the session's
    (`DescribePrompt.max_new_tokens`)."""

    tolerance: int = 1
    attention_row: str = "predicting"
    min_overlap: float = 0.0
    per_head: bool = True
    scope: str = "disappearing"
    band_width: int = 8

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.attention_row not in ROW_KINDS:
            raise ValueError(f"attention_row must be one of {ROW_KINDS}, got {self.attention_row!r}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")


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
    blind = Condition(knockouts=(Knockout(From(item.prompt_length), list(item.groups.image_span)),),
                      label="image->generated")
    tokens = session.engine.generate(item.prepared, [blind], session.prompt.max_new_tokens,
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


def summarize_localization(table: pd.DataFrame, seed: int = 0, band_width: int | None = None) -> pd.DataFrame:
    """Accuracy (heads averaged) per layer, or per band of `band_width` layers, over mentions (each
    mention's hits averaged over the band's layers first), with a 95% bootstrap interval that
    resamples images (the mentions of one description are not independent), and chance; excluded
    mentions are left out and counted (n_excluded, the same on every row)."""
    n_excluded = sum(excluded_counts(table, unit=("image_id", "mention")).values())
    if "excluded" in table:
        table = table[table["excluded"].fillna("") == ""]
    data = table[table["head"] == MEAN_HEAD].copy()
    width = band_width or 1
    data["band"] = data["layer"] // width
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
