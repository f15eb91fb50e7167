"""N2 (Neo et al.): the logit lens on visual tokens, with numbers instead of only pictures.

    from vlminterp.experiments.neo_logit_lens import LensSpec, run_logit_lens
    topk, scores = run_logit_lens(session, selection, LensSpec(top_k=5), cells=cells_by_image(table),
                                  prompts=PromptSpec())     # session: experiments.session.Session

One forward pass per image with the describe prompt (through the engine, unablated). For every
layer output l (l = 0: the embedding output, i.e. the LM's input; l = 1..L: decoder layer l's
output, captured BEFORE the final norm) and every image position, the final norm is applied once
and then the unembedding. (HF's `last_hidden_state` is already normed; the capture hooks read the
layers' raw outputs, so the last layer is normed exactly once: a test checks that layer L equals
the model's own logits.)

Tables:
  topk    one row per image x position x layer x rank: image_id, position, tile, cell_row,
          cell_col (the token's cell, `geometry.map_object_cells`; tile 0 for LLaVA), layer,
          rank, token (decoded), token_id, prob, is_object (b=0 token). The format of
          `plots.lens_html.write_lens_page`.
  scores  one row per image x layer x region (object = the target's b=0 tokens; background = the
          tokens outside its `background_buffer`-dilation, within each tile): n_cells and the
          per-region means of
            name_in_topk  the target's name, a plural or a synonym among the top-k tokens (the
                          paper's measure; a token names the target when it is the first sub-token
                          of one of those surface forms after "It is a", see `name_token_ids`);
            name_top1     the top-1 token over the whole vocabulary names the target;
            name_rank1    among the dataset's category names (each by its first sub-token), the
                          target's has the largest logit (chance = 1 / #categories);
            name_rank     that rank (1 = best), averaged;
            n_categories  the number of category names ranked (chance of name_rank1 = 1 / it).
          name_rank1 works for the organism's word-level vocabulary of a few dozen words, where
          name_in_topk mostly says whether the position decodes to any shape word at all.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vlminterp.data.coco import CocoDataset
from vlminterp.experiments.neo_prompts import PromptSpec
from vlminterp.experiments.session import Session
from vlminterp.geometry import TargetCells
from vlminterp.interventions import capture_residual
from vlminterp.models.adapters import answer_first_token
from vlminterp.scoring.mentions import plural_forms
from vlminterp.scoring.vocabulary import SynonymVocabulary

log = logging.getLogger(__name__)

TOPK_COLUMNS = ["image_id", "position", "tile", "cell_row", "cell_col", "layer", "rank", "token", "token_id",
                "prob", "is_object"]
SCORE_COLUMNS = ["image_id", "annotation_id", "category", "layer", "region", "n_cells", "name_in_topk",
                 "name_top1", "name_rank1", "name_rank", "n_categories"]


@dataclass(frozen=True)
class LensSpec:
    """top_k: tokens kept per position and layer; background_buffer: background cells lie outside
    the object's cells dilated this many times (1 keeps the object's immediate border out);
    html_images: interactive pages written (`write_lens_pages`, the first images of the selection)."""

    top_k: int = 5
    background_buffer: int = 1
    html_images: int = 20

    def __post_init__(self):
        if self.top_k < 1 or self.background_buffer < 0:
            raise ValueError("top_k must be >= 1 and background_buffer >= 0")


def name_token_ids(tokenizer, vocabulary: SynonymVocabulary, category: str, prefix: str) -> set[int]:
    """Token ids that name `category`: the first sub-token of each surface form and its plurals."""
    forms = set(vocabulary.categories.get(category, (category,))) | {category}
    if vocabulary.plurals:
        forms |= {p for f in list(forms) for p in plural_forms(f)}
    return {answer_first_token(tokenizer, prefix, form) for form in sorted(forms)}


def token_text(tokenizer, token_id: int) -> str:
    """The token's text, or `<id N>` for a row of the unembedding with no text: LLaVA-1.5 pads its
    32002-token vocabulary to 32064 rows, and those rows decode to an empty string."""
    return tokenizer.decode([token_id]) or f"<id {token_id}>"


def lens_logits(adapter, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of residual-stream vectors (..., d): the final norm once, then the unembedding."""
    return adapter.unembed(adapter.final_norm(hidden))


@torch.no_grad()
def run_logit_lens(session: Session, selection: pd.DataFrame, spec: LensSpec, *,
                   cells: dict[int, TargetCells], prompts: PromptSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(topk, scores) tables of N2 for the selected images (module docstring)."""
    adapter, dataset, engine = session.adapter, session.dataset, session.engine
    tokenizer, vocabulary = session.tokenizer, session.vocabulary
    categories = list(dataset.category_names().values())
    category_tokens = torch.tensor([answer_first_token(tokenizer, prompts.vqa_answer_prefix, c) for c in categories])
    if len(set(category_tokens.tolist())) != len(categories):
        log.warning("two category names share a first sub-token; their ranks tie at the better one")
    topk_frames, score_rows = [], []
    for target in tqdm(list(selection.itertuples(index=False)), desc="logit lens", mininterval=5):
        image_id, name = int(target.image_id), str(target.category_name)
        target_cells = cells[image_id]
        prepared = session.prepare(dataset.load_image(image_id), prompts.describe)
        (positions,) = adapter.image_positions(prepared.input_ids)
        target_cells.check_prompt(positions)
        with capture_residual(adapter, positions=positions) as record:
            engine.logits(prepared, [None])
        states = [record.embeddings()] + [record.layer(l) for l in range(adapter.n_layers)]
        own_ids = torch.tensor(sorted(name_token_ids(tokenizer, vocabulary, name, prompts.vqa_answer_prefix)))
        target_index = categories.index(name)
        obj = target_cells.object_base()
        regions = {"object": obj, "background": ~target_cells.dilate(obj, spec.background_buffer)}
        for layer, state in enumerate(states):
            logits = lens_logits(adapter, state[0]).float()  # (P, V), on the model's device
            top_p, top_i = logits.softmax(dim=-1).topk(spec.top_k, dim=-1)
            cat_logits = logits[:, category_tokens.to(logits.device)].cpu()
            top_p, top_i = top_p.cpu(), top_i.cpu()
            in_topk = torch.isin(top_i, own_ids).any(dim=-1).numpy()
            top1 = torch.isin(top_i[:, 0], own_ids).numpy()
            rank = 1 + (cat_logits > cat_logits[:, target_index:target_index + 1]).sum(dim=-1).numpy()
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
                score_rows.append({
                    "image_id": image_id, "annotation_id": int(target.annotation_id), "category": name,
                    "layer": layer, "region": region, "n_cells": n,
                    "name_in_topk": float(in_topk[member].mean()) if n else np.nan,
                    "name_top1": float(top1[member].mean()) if n else np.nan,
                    "name_rank1": float((rank[member] == 1).mean()) if n else np.nan,
                    "name_rank": float(rank[member].mean()) if n else np.nan,
                    "n_categories": len(categories)})
    topk = pd.concat(topk_frames, ignore_index=True) if topk_frames else pd.DataFrame(columns=TOPK_COLUMNS)
    return topk[TOPK_COLUMNS], pd.DataFrame(score_rows, columns=SCORE_COLUMNS)


def write_lens_pages(topk: pd.DataFrame, selection: pd.DataFrame, cells: dict[int, TargetCells],
                     dataset: CocoDataset, out_dir, max_pages: int | None) -> list:
    """One interactive page per image (the first `max_pages` of `selection`) and `index.html`."""
    from pathlib import Path

    from vlminterp.plots.lens_html import write_lens_index, write_lens_page

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = []
    chosen = selection if max_pages is None else selection.head(max_pages)
    for target in chosen.itertuples(index=False):
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
        top1 = part[(part["rank"] == 1) & part["is_object"].astype(bool)]
        named = top1.groupby("layer")["token"].apply(
            lambda t: float((t.str.strip().str.lower() == str(target.category_name).lower()).mean()))
        best = int(named.idxmax()) if len(named) and named.max() > 0 else None
        pages.append((page, title, {"object": str(target.category_name), "object cells": int(obj.sum()),
                                    "best layer (object top-1 = name)": best,
                                    "share at best layer": float(named.max()) if len(named) else None}))
    write_lens_index(pages, out_dir / "index.html")
    return pages
