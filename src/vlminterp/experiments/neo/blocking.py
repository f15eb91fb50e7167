"""N3 (Neo et al.): block attention to the object's tokens in a window of layers.

    windows = layer_windows(n_layers=32, spec=BlockingSpec())   # sliding (every start) + fixed
    table = run_attention_blocking(session, selection, BlockingSpec(), cells=cells_by_image(table),
                                   prompts=PromptSpec())

Builds the block sets (token sets of `experiments.shared.cells.TargetCells`) and the layer windows, and runs all
windows of one image and block-set family as one batched engine call (an explicit boolean mask
in the attention function). Protocol, sets, windows and columns: docs/PROTOCOLS.md, "N3.
Attention blocking".
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vlminterp.batching import BATCH_COLUMNS
from vlminterp.experiments.neo.prompts import PromptSpec, question_image_ids, vqa_questions
from vlminterp.experiments.shared.session import Session
from vlminterp.experiments.shared.cells import TargetCells
from vlminterp.interventions import Condition, Knockout
from vlminterp.models.adapters import answer_first_token
from vlminterp.scoring.pieces import first_pieces
from vlminterp.experiments.neo.specs import (  # noqa: F401  (the settings live in a light module)
    FixedWindow, BLOCK_SETS, LAST_ROW_QUERIES, DROP_OF, BlockingSpec)
from vlminterp.experiments.shared.layers import fraction_window

log = logging.getLogger(__name__)


# The paper's windows on 32 layers (0-indexed, inclusive): early 0-9, mid 11-20, late 21-31,
# early-mid 5-14, mid-late 15-24, all; as [start, end) fractions of the depth.
FIXED_WINDOWS: tuple[FixedWindow, ...] = tuple(FixedWindow(*window) for window in (
    ("early", 0 / 32, 10 / 32), ("mid", 11 / 32, 21 / 32), ("late", 21 / 32, 32 / 32),
    ("early-mid", 5 / 32, 15 / 32), ("mid-late", 15 / 32, 25 / 32), ("all", 0.0, 1.0),
))
BLOCKING_COLUMNS = ["image_id", "annotation_id", "category", "block_set", "window_kind", "window", "window_start",
                    "window_end", "n_layers", "n_blocked", "p_correct", "correct", "p_baseline", "baseline_correct",
                    "included", "p_top1", "p_top1_baseline", "drop_of", "drop", "relative_drop", *BATCH_COLUMNS,
                    "excluded"]


@dataclass(frozen=True)
class Window:
    kind: str  # "sliding" | "fixed"
    name: str
    layers: tuple[int, ...]


def layer_windows(n_layers: int, spec: BlockingSpec) -> list[Window]:
    """Sliding windows (one per start layer, truncated at the top) then the fixed windows."""
    sliding = [Window("sliding", f"start {s}", tuple(range(s, min(s + spec.window, n_layers))))
               for s in range(n_layers)]
    fixed = [Window("fixed", str(name), fraction_window(n_layers, float(a), float(b)))
             for name, a, b in spec.fixed_windows]
    return sliding + fixed


def object_tokens(cells: TargetCells, buffer: int) -> np.ndarray:
    """The object's tokens dilated `buffer` times: the cell table's column when studied, else the
    b=0 tokens dilated here (8-neighbourhood, within each tile)."""
    if buffer in cells.object_b:
        return cells.object_b[buffer]
    if 0 not in cells.object_b:
        raise ValueError(f"image {cells.image_id}: buffer {buffer} needs the b=0 object tokens in the cell table")
    return cells.dilate(cells.object_b[0], buffer)


def block_sets(cells: TargetCells, spec: BlockingSpec, image_positions: np.ndarray, last: int):
    """(name, query positions, key positions) of every block set of one image (module docstring)."""
    image_positions = cells.check_prompt(image_positions)
    base = cells.object_base()
    last_row = cells.last_row()
    out = []
    if "object" in spec.block_sets:
        for b, tokens in cells.object_b.items():
            out.append((f"object_b{b}", [last], cells.positions(tokens, image_positions)))
    if "non_object" in spec.block_sets:
        control = ~object_tokens(cells, spec.control_buffer)
        out.append(("non_object", [last], cells.positions(control, image_positions)))
    if "object_to_last_row" in spec.block_sets:
        keys = object_tokens(cells, spec.last_row_buffer)
        queries = last_row if spec.last_row_queries == "all" else last_row & ~keys
        out.append(("object_to_last_row", cells.positions(queries, image_positions), cells.positions(keys, image_positions)))
    if "image_to_last_row" in spec.block_sets:
        out.append(("image_to_last_row", cells.positions(last_row, image_positions),
                    cells.positions(~last_row, image_positions)))
    if "object_to_text" in spec.block_sets:
        queries = np.arange(int(image_positions.max()) + 1, last + 1)
        out.append(("object_to_text", queries, cells.positions(base, image_positions)))
    return out


@torch.no_grad()
def run_attention_blocking(session: Session, selection: pd.DataFrame, spec: BlockingSpec, *,
                           cells: dict[int, TargetCells], prompts: PromptSpec) -> pd.DataFrame:
    """The N3 table (module docstring)."""
    engine = session.engine  # opened with spec.batch_size (stages.attention_blocking)
    adapter, dataset, tokenizer = session.adapter, session.dataset, session.tokenizer
    asked = question_image_ids(prompts)
    if asked is not None:  # the authors' design: N3 runs on the images that have a question
        selection = selection[selection["image_id"].isin(asked)]
    questions = vqa_questions(dataset, selection, prompts)
    windows = layer_windows(adapter.n_layers, spec)
    pieces = first_pieces(tokenizer, session.vocabulary, prompts.vqa_answer_prefix, dataset.category_names().values())
    rows: list[dict] = []
    for target in tqdm(list(selection.itertuples(index=False)), desc="attention blocking", mininterval=5):
        image_id, name = int(target.image_id), str(target.category_name)
        excluded = cells[image_id].excluded or pieces.name_piece_problem(name)
        if excluded:
            log.info("image %s: target %s excluded (%s)", image_id, target.annotation_id, excluded)
            rows.append({"image_id": image_id, "annotation_id": int(target.annotation_id), "category": name,
                         "block_set": "none", "window_kind": "none", "window": "none", "window_start": None,
                         "window_end": None, "n_layers": 0, "n_blocked": 0, "p_correct": np.nan, "correct": False,
                         "p_baseline": np.nan, "baseline_correct": False, "included": False, "p_top1": np.nan,
                         "p_top1_baseline": np.nan, "drop_of": spec.drop_of, "drop": np.nan,
                         "relative_drop": np.nan, **engine.batches.columns(since=engine.batches.retries),
                         "excluded": excluded})
            continue
        retries_before = engine.batches.retries
        answer = answer_first_token(tokenizer, prompts.vqa_answer_prefix, name)
        prepared = session.prepare(dataset.load_image(image_id), questions[image_id],
                                   answer_prefix=prompts.vqa_answer_prefix)
        (positions,) = adapter.image_positions(prepared.input_ids)
        last = prepared.length - 1
        sets = block_sets(cells[image_id], spec, positions.cpu().numpy(), last)
        # One call for the sets read at the last position (+ the unblocked row), one per other query
        # set (each shares the prefix up to its own first blocked query).
        groups: dict[tuple[int, ...], list] = {(last,): []}
        for entry in sets:
            groups.setdefault(tuple(int(q) for q in entry[1]), []).append(entry)
        common = {"image_id": image_id, "annotation_id": int(target.annotation_id), "category": name}
        baseline, image_rows = None, []
        for group_index, group in enumerate(groups.values()):
            conditions, labels = ([Condition()], [None]) if group_index == 0 else ([], [])
            for set_name, queries, keys in group:
                for window in windows:
                    conditions.append(Condition(knockouts=(Knockout(torch.as_tensor(queries), torch.as_tensor(keys),
                                                                    layers=window.layers),),
                                                label=f"{set_name} {window.name}"))
                    labels.append((set_name, window, len(keys)))
            if not conditions:
                continue
            probs = engine.logits(prepared, conditions)[:, -1].float().softmax(dim=-1)
            p_answer = probs[:, answer].tolist()
            correct = (probs.argmax(dim=-1) == answer).tolist()
            p_top1 = probs.max(dim=-1).values.tolist()
            if group_index == 0:
                baseline = (p_answer[0], bool(correct[0]), p_top1[0])
            for label, p, ok, top in zip(labels, p_answer, correct, p_top1):
                if label is None:
                    row = {"block_set": "none", "window_kind": "none", "window": "none", "window_start": None,
                           "window_end": None, "n_layers": 0, "n_blocked": 0}
                else:
                    set_name, window, n_blocked = label
                    row = {"block_set": set_name, "window_kind": window.kind, "window": window.name,
                           "window_start": window.layers[0], "window_end": window.layers[-1],
                           "n_layers": len(window.layers), "n_blocked": n_blocked}
                image_rows.append({**common, **row, "p_correct": p, "correct": bool(ok), "p_top1": top})
        batching = engine.batches.columns(since=retries_before)
        for row in image_rows:
            row.update(batching)
            base, blocked = ((baseline[0], row["p_correct"]) if spec.drop_of == "correct"
                             else (baseline[2], row["p_top1"]))
            row.update(excluded="", p_baseline=baseline[0], baseline_correct=baseline[1], included=baseline[1],
                       p_top1_baseline=baseline[2], drop_of=spec.drop_of, drop=base - blocked,
                       relative_drop=(base - blocked) / base if base > 0 else np.nan)
        rows.extend(image_rows)
    table = pd.DataFrame(rows, columns=BLOCKING_COLUMNS)
    return table.astype({"window_start": "Int64", "window_end": "Int64"})


def summarize_blocking(table: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Per block set x window: the mean drop over included images (the table's `drop`, whichever
    `drop_of` made it) with a bootstrap 95% interval, and the blocked accuracy: correct blocked
    answers among the included images divided by the included images (`drop_of: correct`) or by
    ALL images of the table, excluded targets included (`top1`, the authors' denominator).
    Columns: block_set, window_kind, window, window_start, window_end, drop_of, mean_drop, low, high,
    accuracy, n_included, n_images."""
    from vlminterp.stats import bootstrap_ci

    n_images = int(table["image_id"].nunique())
    drop_of = str(table["drop_of"].dropna().iloc[0]) if table["drop_of"].notna().any() else "correct"
    blocked = table[table["block_set"] != "none"]
    included = blocked[blocked["included"].astype(bool)]
    rows = []
    keys = ["block_set", "window_kind", "window", "window_start", "window_end"]
    for key, part in included.groupby(keys, sort=False, dropna=False):
        low, high = bootstrap_ci(part["drop"].to_numpy(dtype=float), seed=seed)
        n_included = int(part["image_id"].nunique())
        denominator = n_images if drop_of == "top1" else n_included
        rows.append({**dict(zip(keys, key)), "drop_of": drop_of, "mean_drop": float(part["drop"].mean()),
                     "low": low, "high": high,
                     "accuracy": float(part["correct"].astype(bool).sum() / denominator) if denominator else np.nan,
                     "n_included": n_included, "n_images": n_images})
    return pd.DataFrame(rows, columns=[*keys, "drop_of", "mean_drop", "low", "high", "accuracy", "n_included",
                                       "n_images"])
