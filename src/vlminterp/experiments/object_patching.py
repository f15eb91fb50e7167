"""Cross-image activation patching of object tokens: does image B's answer become image A's object
when B's object tokens carry A's object at layer l?

    table = patching_stage(session=..., spec={"n_pairs": 8}, prompts=..., selection="neo/selection.csv",
                           cells="neo/cells.csv", seed=0)
    summary = summarize_patching(table, seed=0)

Pairs the Neo targets, patches B's object tokens at every layer (`interventions.Patch`) and reads
the VQA answer's top-1 token. Protocol and columns: docs/PROTOCOLS.md, "Cross-image object
patching".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from vlminterp.specs import configured

COLUMNS = ["target_image_id", "target_category", "source_image_id", "source_category", "condition", "patched_from",
           "layer", "n_patched", "answer", "becomes_source", "keeps_target", "p_source", "p_target"]
CONDITIONS = ("object", "same_object", "background")


@dataclass(frozen=True)
@configured("patching")
class PatchingSpec:
    """Settings of the object patching, config section patching (types, defaults, meanings:
    workflow/schemas/config.schema.yaml); seed: the pairing's shuffle (the run's seed)."""

    enabled: bool
    n_pairs: int
    batch_size: int
    seed: int = 0

    def __post_init__(self):
        if self.n_pairs < 1 or self.batch_size < 1:
            raise ValueError("n_pairs and batch_size must be >= 1")


def pairs(targets: pd.DataFrame, n_pairs: int, seed: int) -> list[tuple[int, int, int | None]]:
    """(B, A, C) row indices of `targets` (module docstring); C is None when B's category has no other target."""
    order = np.random.default_rng(seed).permutation(len(targets))
    categories = targets["category_name"].astype(str).to_numpy()
    out = []
    for position, b in enumerate(order):
        following = [*order[position + 1:], *order[:position]]
        a = next((i for i in following if categories[i] != categories[b]), None)
        if a is None:
            continue
        c = next((i for i in following if categories[i] == categories[b]), None)
        out.append((int(b), int(a), None if c is None else int(c)))
        if len(out) == n_pairs:
            break
    return out


@torch.no_grad()
def run_patching(session, selection: pd.DataFrame, spec: PatchingSpec, *, cells: dict, prompts) -> pd.DataFrame:
    """The patching table (module docstring)."""
    from vlminterp.experiments.neo_prompts import vqa_questions
    from vlminterp.interventions import Condition, Patch, record_site
    from vlminterp.scoring.pieces import first_pieces

    engine = session.engine  # opened with spec.batch_size (patching_stage)
    adapter, dataset, tokenizer = session.adapter, session.dataset, session.tokenizer
    pieces = first_pieces(tokenizer, session.vocabulary, prompts.vqa_answer_prefix, dataset.category_names().values())
    usable = selection[[not cells[int(i)].excluded and not pieces.name_piece_problem(str(c))
                        for i, c in zip(selection["image_id"], selection["category_name"])]].reset_index(drop=True)
    questions = vqa_questions(dataset, usable, prompts)
    layers = range(adapter.n_layers)
    prepared, means = {}, {}

    def prepare(index: int):
        """(prepared input, object positions, background positions) of one target, cached."""
        if index not in prepared:
            image_id = int(usable["image_id"].iloc[index])
            x = session.prepare(dataset.load_image(image_id), questions[image_id], answer_prefix=prompts.vqa_answer_prefix)
            (image_positions,) = adapter.image_positions(x.input_ids)
            mask = cells[image_id].object_base()
            prepared[index] = (x, cells[image_id].positions(mask, image_positions),
                               cells[image_id].positions(~mask, image_positions))
        return prepared[index]

    def mean_at(index: int, part: int, layer: int) -> torch.Tensor:
        """Mean of a target's object (part 1) or background (part 2) tokens at resid_post.{layer}."""
        if (index, part, layer) not in means:
            x, *positions = prepare(index)
            means[index, part, layer] = record_site(engine, x, f"resid_post.{layer}", positions[part - 1]).mean(dim=0)
        return means[index, part, layer]

    rows = []
    for b, a, c in pairs(usable, spec.n_pairs, spec.seed):
        x, object_positions, _ = prepare(b)
        sources = {"object": (a, 1), "background": (a, 2), **({"same_object": (c, 1)} if c is not None else {})}
        labels, conditions = [("none", None, -1)], [Condition()]
        for name in CONDITIONS:
            if name not in sources:
                continue
            source, part = sources[name]
            for layer in layers:
                value = mean_at(source, part, layer).expand(len(object_positions), -1)
                labels.append((name, source, layer))
                conditions.append(Condition(edits=(Patch(f"resid_post.{layer}", object_positions.tolist(), value),),
                                            label=f"{name}@{layer}"))
        probs = engine.logits(x, conditions)[:, -1].float().softmax(dim=-1)
        top = probs.argmax(dim=-1).tolist()
        target_category, source_category = str(usable["category_name"].iloc[b]), str(usable["category_name"].iloc[a])
        source_ids, target_ids = sorted(pieces.credits[source_category]), sorted(pieces.credits[target_category])
        for (name, source, layer), token, p in zip(labels, top, probs):
            rows.append({"target_image_id": int(usable["image_id"].iloc[b]), "target_category": target_category,
                         "source_image_id": int(usable["image_id"].iloc[a]), "source_category": source_category,
                         "condition": name, "layer": layer,
                         "patched_from": -1 if source is None else int(usable["image_id"].iloc[source]),
                         "n_patched": 0 if name == "none" else len(object_positions), "answer": tokenizer.decode([token]),
                         "becomes_source": token in source_ids, "keeps_target": token in target_ids,
                         "p_source": float(p[source_ids].sum()), "p_target": float(p[target_ids].sum())})
    return pd.DataFrame(rows, columns=COLUMNS)


def summarize_patching(table: pd.DataFrame, *, seed: int = 0, n_resamples: int = 2000) -> pd.DataFrame:
    """Per condition x layer: the share of pairs whose answer becomes A's object and the share that
    keeps B's, with 95% bootstrap intervals over pairs (columns measure, condition, layer, mean, low, high, n)."""
    from vlminterp.stats import grouped_mean_ci

    parts = [grouped_mean_ci(table, by=["condition", "layer"], value=measure, seed=seed,
                             n_resamples=n_resamples).assign(measure=measure)
             for measure in ("becomes_source", "keeps_target")]
    summary = pd.concat(parts, ignore_index=True)
    return summary[["measure", "condition", "layer", "mean", "low", "high", "n"]]


def patching_stage(*, session: dict, spec: dict, prompts: dict, selection, cells, seed: int,
                   questions=None) -> pd.DataFrame:
    """Rule patch_object_tokens: the patching table of the run's Neo targets (config section `patching`)."""
    from vlminterp.experiments.neo_prompts import PromptSpec
    from vlminterp.experiments.session import Session, StageConfig
    from vlminterp.geometry import cells_by_image
    from vlminterp.io import read_table
    from vlminterp.specs import build_spec

    patching = build_spec(PatchingSpec, spec, where="patching", seed=seed)
    opened = Session.open(build_spec(StageConfig, {**session, "stage": "object patching",
                                                   "batch_size": patching.batch_size}, where="session"))
    prompt_spec = build_spec(PromptSpec, prompts, where="neo.prompts",
                             **({"vqa_questions_file": str(questions)} if questions else {}))
    return run_patching(opened, read_table(selection), patching,
                        cells=cells_by_image(read_table(cells)), prompts=prompt_spec)


def summary_stage(*, table, seed: int) -> pd.DataFrame:
    """Rule summarize_object_patching: the summary of the patching table."""
    from vlminterp.io import read_table

    return summarize_patching(read_table(table), seed=seed)
