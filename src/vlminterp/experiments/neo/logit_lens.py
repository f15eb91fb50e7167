"""N2 (Neo et al.): the logit lens on visual tokens, with numbers instead of only pictures.

    topk, scores = run_logit_lens(session, selection, LensSpec(top_k=5), cells=cells_by_image(table),
                                  prompts=PromptSpec())
    by_category, null_control = summarize_lens(scores)

One unablated forward pass per image; every layer's raw output at every image position (read by a
`Capture` of resid_pre.0 and resid_post.{l-1}, so the last layer is normed exactly once) goes
through the final norm and the unembedding. Protocol, measures and tables: docs/PROTOCOLS.md,
"N2. Logit lens".
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from vlminterp.data.coco import CocoDataset
from vlminterp.experiments.neo.prompts import PromptSpec
from vlminterp.experiments.shared.cells import TargetCells
from vlminterp.scoring.pieces import first_pieces
from vlminterp.batching import no_grad
from vlminterp.experiments.neo.specs import LensSpec  # noqa: F401  (the settings live in a light module)

if TYPE_CHECKING:  # loads torch and transformers: the stage's functions get an open session
    import torch

    from vlminterp.experiments.shared.session import Session

log = logging.getLogger(__name__)

TOPK_COLUMNS = ["image_id", "position", "tile", "cell_row", "cell_col", "layer", "rank", "token", "token_id",
                "prob", "is_object"]
SCORE_COLUMNS = ["image_id", "annotation_id", "category", "layer", "region", "n_cells", "name_in_topk",
                 "name_top1", "name_rank1", "name_rank", "n_categories", "null_category", "null_in_topk",
                 "null_top1", "null_rank1"]
MEASURES = ["name_in_topk", "name_top1", "name_rank1"]


def permuted_labels(selection: pd.DataFrame, seed: int) -> dict[int, str]:
    """image id -> the category of another target: the selection's category column permuted
    across its images with `seed` (the null control's labels; the same in every shard)."""
    table = selection.drop_duplicates("image_id").sort_values("image_id")
    order = np.random.default_rng([seed, 2]).permutation(len(table))
    return dict(zip(table["image_id"].astype(int), table["category_name"].astype(str).to_numpy()[order]))


def token_text(tokenizer, token_id: int) -> str:
    """The token's text, or `<id N>` for a row of the unembedding with no text: LLaVA-1.5 pads its
    32002-token vocabulary to 32064 rows, and those rows decode to an empty string."""
    return tokenizer.decode([token_id]) or f"<id {token_id}>"


def lens_logits(adapter, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of residual-stream vectors (..., d): the final norm once, then the unembedding."""
    return adapter.unembed(adapter.final_norm(hidden))


@no_grad
def run_logit_lens(session: Session, selection: pd.DataFrame, spec: LensSpec, *,
                   cells: dict[int, TargetCells], prompts: PromptSpec,
                   null_labels: dict[int, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(topk, scores) tables of N2 for the selected images (module docstring). `null_labels`:
    image id -> the permuted label of the null control (`permuted_labels`; by default the
    selection's own labels permuted with seed 0)."""
    import torch

    from vlminterp.interventions import Capture

    adapter, dataset, engine = session.adapter, session.dataset, session.engine
    tokenizer, vocabulary = session.tokenizer, session.vocabulary
    categories = list(dataset.category_names().values())
    pieces = first_pieces(tokenizer, vocabulary, prompts.vqa_answer_prefix, categories)
    if pieces.shared:
        log.info("N2: first pieces shared by several categories credit none of them: %s",
                 {tokenizer.convert_ids_to_tokens(p): c for p, c in pieces.shared.items()})
    if pieces.unscorable():
        log.warning("N2: categories with no collision-free first piece score NaN: %s", pieces.unscorable())
    ranked = [c for c in categories if pieces.name_piece[c] is not None]
    category_tokens = torch.tensor([pieces.name_piece[c] for c in ranked], dtype=torch.long)
    null_labels = permuted_labels(selection, 0) if null_labels is None else null_labels
    topk_frames, score_rows = [], []
    for target in tqdm(list(selection.itertuples(index=False)), desc="logit lens", mininterval=5):
        image_id, name = int(target.image_id), str(target.category_name)
        target_cells = cells[image_id]
        if target_cells.excluded:
            log.info("image %s: target %s excluded (%s)", image_id, target.annotation_id, target_cells.excluded)
            continue
        prepared = session.prepare(dataset.load_image(image_id), prompts.describe)
        (positions,) = adapter.image_positions(prepared.input_ids)
        target_cells.check_prompt(positions)
        sites = ["resid_pre.0"] + [f"resid_post.{l}" for l in range(adapter.n_layers)]
        read = Capture(sites, positions)
        engine.logits(prepared, [read])
        states = [read.record[site][None] for site in sites]  # (1, P, d) each: layer 0 = embeddings
        null_name = str(null_labels[image_id])
        labels = {"name": name, "null": null_name}
        obj = target_cells.object_base()
        regions = {"object": obj, "background": ~target_cells.dilate(obj, spec.background_buffer)}
        for layer, state in enumerate(states):
            logits = lens_logits(adapter, state[0]).float()  # (P, V), on the model's device
            top_p, top_i = logits.softmax(dim=-1).topk(spec.top_k, dim=-1)
            cat_logits = logits[:, category_tokens.to(logits.device)].cpu()
            top_p, top_i = top_p.cpu(), top_i.cpu()
            reads = {}
            for kind, label in labels.items():
                own = torch.tensor(sorted(pieces.credits[label]), dtype=torch.long)
                scorable = len(own) > 0
                index = ranked.index(label) if label in ranked else None
                reads[kind] = (
                    torch.isin(top_i, own).any(dim=-1).numpy() if scorable else None,
                    torch.isin(top_i[:, 0], own).numpy() if scorable else None,
                    None if index is None else 1 + (cat_logits > cat_logits[:, index:index + 1]).sum(dim=-1).numpy())
            k = spec.top_k
            topk_frames.append(pd.DataFrame({
                "image_id": image_id, "position": np.repeat(positions.cpu().numpy(), k),
                "tile": np.repeat(target_cells.tile, k), "cell_row": np.repeat(target_cells.row, k),
                "cell_col": np.repeat(target_cells.col, k), "layer": layer,
                "rank": np.tile(np.arange(1, k + 1), len(positions)),
                "token": [token_text(tokenizer, int(t)) for t in top_i.reshape(-1)],
                "token_id": top_i.reshape(-1).numpy(), "prob": top_p.reshape(-1).numpy(),
                "is_object": np.repeat(obj, k)}))
            for region, member in regions.items():
                n = int(member.sum())

                def mean(values, transform=lambda v: v):
                    return float(transform(values[member]).mean()) if n and values is not None else np.nan

                (in_topk, top1, rank), (null_topk, null_top1, null_rank) = reads["name"], reads["null"]
                score_rows.append({
                    "image_id": image_id, "annotation_id": int(target.annotation_id), "category": name,
                    "layer": layer, "region": region, "n_cells": n,
                    "name_in_topk": mean(in_topk), "name_top1": mean(top1),
                    "name_rank1": mean(rank, lambda r: r == 1), "name_rank": mean(rank),
                    "n_categories": len(ranked), "null_category": null_name,
                    "null_in_topk": mean(null_topk), "null_top1": mean(null_top1),
                    "null_rank1": mean(null_rank, lambda r: r == 1)})
    topk = pd.concat(topk_frames, ignore_index=True) if topk_frames else pd.DataFrame(columns=TOPK_COLUMNS)
    return topk[TOPK_COLUMNS], pd.DataFrame(score_rows, columns=SCORE_COLUMNS)


def summarize_lens(scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(by_category, null_control) summaries of the gathered N2 scores (module docstring).

    by_category: category, layer, region, n_images (targets), n_scored (targets whose name_in_topk
    has a value: 0 for a category with no collision-free first piece), and the mean of each measure
    over the category's targets. null_control: layer, region, and per measure its mean over
    all targets (`<measure>`), the same readout against the permuted labels (`<measure>_null`),
    with n_images, and `chance_rank1` = 1 / n_categories (what name_rank1_null should be near)."""
    keys = ["layer", "region"]
    by_category = (scores.groupby(["category", *keys], sort=True)
                   .agg(n_images=("image_id", "nunique"), n_scored=("name_in_topk", "count"),
                        **{m: (m, "mean") for m in MEASURES},
                        name_rank=("name_rank", "mean"), n_categories=("n_categories", "max"))
                   .reset_index())
    nulls = {m: f"null_{m.removeprefix('name_')}" for m in MEASURES}
    control = (scores.groupby(keys, sort=True)
               .agg(n_images=("image_id", "nunique"), **{m: (m, "mean") for m in MEASURES},
                    **{f"{m}_null": (nulls[m], "mean") for m in MEASURES},
                    n_categories=("n_categories", "max"))
               .reset_index())
    control["chance_rank1"] = 1.0 / control["n_categories"]
    return by_category, control


def example_targets(selection: pd.DataFrame, scores: pd.DataFrame, max_pages: int | None) -> pd.DataFrame:
    """The targets to draw pages for: hits (the object region's name_in_topk > 0 at some layer)
    and misses (0 at every layer, or unscorable) alternately, each in selection order, up to
    `max_pages` (None: every scored target). Excluded targets have no scores and no page."""
    best = scores[scores["region"] == "object"].groupby("image_id")["name_in_topk"].max()
    scored = selection[selection["image_id"].isin(best.index)]
    hit = scored["image_id"].map(best).fillna(0).to_numpy() > 0
    hits, misses = scored[hit], scored[~hit]
    if max_pages is None or max_pages >= len(scored):
        return scored
    order = []
    for i in range(max_pages):
        for part in (hits, misses):
            if i < len(part):
                order.append(part.iloc[i])
    return pd.DataFrame(order[:max_pages], columns=scored.columns) if order else scored.head(0)


def page_summary(scores: pd.DataFrame, image_id: int, category: str, n_cells: int) -> dict:
    """The index row of one page, read from the scores table (one definition with scores.csv):
    the layer where the object region's name_in_topk peaks (None where it is 0 or NaN at every
    layer) and the object region's name_in_topk / name_top1 there."""
    part = scores[(scores["image_id"] == image_id) & (scores["region"] == "object")].set_index("layer")
    values = part["name_in_topk"]
    best = int(values.idxmax()) if values.notna().any() and values.max() > 0 else None
    at = best if best is not None else (int(values.index.max()) if len(values) else None)
    return {"object": category, "object cells": n_cells,
            "hit": "unscorable" if not values.notna().any() else ("hit" if best is not None else "miss"),
            "best layer (object name_in_topk)": best,
            "name_in_topk there (last layer if none)": None if at is None else float(values.loc[at]),
            "name_top1 there": None if at is None else float(part["name_top1"].loc[at])}


def write_lens_pages(topk: pd.DataFrame, selection: pd.DataFrame, cells: dict[int, TargetCells],
                     dataset: CocoDataset, out_dir, max_pages: int | None, scores: pd.DataFrame) -> list:
    """One interactive page per example target (`example_targets`: hits and misses) and `index.html`,
    whose rows read the scores table (`page_summary`)."""
    from pathlib import Path

    from vlminterp.plots.lens_html import write_lens_index, write_lens_page

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = []
    for target in example_targets(selection, scores, max_pages).itertuples(index=False):
        image_id = int(target.image_id)
        part = topk[topk["image_id"] == image_id]
        if part.empty:
            continue
        target_cells = cells[image_id]
        obj = target_cells.object_base()
        boxes = [target_cells.grid_boxes(t) for t in range(target_cells.num_tiles)]
        objects = [target_cells.grid_of(obj, t) for t in range(target_cells.num_tiles)]
        if target_cells.num_tiles == 1:  # one grid (LLaVA, Qwen2-VL): the page's plain layout
            boxes, objects = boxes[0], objects[0]
        title = f"image {image_id}: {target.category_name}"
        page = write_lens_page(part, dataset.load_image(image_id), boxes, out_dir / f"image_{image_id}.html",
                               object_cells=objects, object_name=str(target.category_name), title=title)
        pages.append((page, title, page_summary(scores, image_id, str(target.category_name), int(obj.sum()))))
    write_lens_index(pages, out_dir / "index.html")
    return pages
