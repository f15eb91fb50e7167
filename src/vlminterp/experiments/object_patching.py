"""Cross-image activation patching of object tokens: does image B's answer become image A's object
when B's object tokens carry A's object at layer l?

    table = patching_stage(session=..., spec={}, prompts=..., selection="neo/selection.csv",
                           cells="neo/cells.csv", seed=0)
    summary, by_category = summary_stage(table=table_path, seed=0)

Pairs the Neo targets, patches B's object tokens at every layer (`interventions.Patch`) and reads
the VQA answer's top-1 token. Protocol and columns: docs/PROTOCOLS.md, "Cross-image object
patching".
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vlminterp.experiments.patching_specs import (  # noqa: F401  (the settings live in a light module)
    CONDITIONS, PatchingSpec)
from vlminterp.batching import no_grad

if TYPE_CHECKING:
    import torch

COLUMNS = ["target_image_id", "target_category", "source_image_id", "source_category", "condition", "patched_from",
           "layer", "n_patched", "answer", "becomes_source", "keeps_target", "p_source", "p_target", "n_categories",
           "excluded"]
MEASURES = ("becomes_source", "keeps_target")


def pairs(targets: pd.DataFrame, n_pairs: int | None, seed: int) -> list[tuple[int, list[int], int | None]]:
    """(B, [A, one per other category], C) row indices of `targets` (module docstring), for up to
    `n_pairs` targets B (None: all) that have a target of another category; C is None when B's
    category has no other target."""
    order = np.random.default_rng(seed).permutation(len(targets))
    categories = targets["category_name"].astype(str).to_numpy()
    out = []
    for position, b in enumerate(order):
        if n_pairs is not None and len(out) == n_pairs:
            break
        following = [*order[position + 1:], *order[:position]]
        sources: dict[str, int] = {}
        for i in following:
            if categories[i] != categories[b]:
                sources.setdefault(categories[i], int(i))
        if not sources:
            continue
        c = next((i for i in following if categories[i] == categories[b]), None)
        out.append((int(b), list(sources.values()), None if c is None else int(c)))
    return out


@no_grad
def run_patching(session, selection: pd.DataFrame, spec: PatchingSpec, *, cells: dict, prompts) -> pd.DataFrame:
    """The patching table (module docstring)."""
    from vlminterp.experiments.neo.prompts import vqa_questions
    from vlminterp.interventions import Condition, Patch, record_site
    from vlminterp.scoring.pieces import first_pieces

    engine = session.engine  # opened with spec.batch_size (patching_stage)
    adapter, dataset, tokenizer = session.adapter, session.dataset, session.tokenizer
    pieces = first_pieces(tokenizer, session.vocabulary, prompts.vqa_answer_prefix, dataset.category_names().values())
    reasons = [cells[int(i)].excluded or pieces.name_piece_problem(str(c))
               for i, c in zip(selection["image_id"], selection["category_name"])]
    usable = selection[[not r for r in reasons]].reset_index(drop=True)
    found = pairs(usable, spec.n_pairs, spec.seed)
    paired = {int(usable["image_id"].iloc[b]) for b, _, _ in found}
    if spec.n_pairs is None:  # every eligible target is studied: the ones left have no other category
        reasons = [r or ("" if int(i) in paired else "no eligible target of another category")
                   for i, r in zip(selection["image_id"], reasons)]
    n_categories = usable["category_name"].nunique()
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

    def patch(name: str, source: int, part: int, layer: int, positions) -> Condition:
        value = mean_at(source, part, layer).expand(len(positions), -1)
        return Condition(edits=(Patch(f"resid_post.{layer}", positions.tolist(), value),), label=f"{name}@{layer}")

    rows = [{"target_image_id": int(i), "target_category": str(c), "source_image_id": -1, "source_category": "",
             "condition": "none", "patched_from": -1, "layer": -1, "n_patched": 0, "answer": "",
             "becomes_source": False, "keeps_target": False, "p_source": np.nan, "p_target": np.nan,
             "n_categories": n_categories, "excluded": r}
            for i, c, r in zip(selection["image_id"], selection["category_name"], reasons) if r]
    for b, sources, c in found:
        x, object_positions, _ = prepare(b)
        # the conditions that do not depend on A (unpatched, same_object) once, then A's per source
        labels, conditions = [("none", None, None, -1)], [Condition()]
        if c is not None:
            labels += [("same_object", None, c, layer) for layer in layers]
            conditions += [patch("same_object", c, 1, layer, object_positions) for layer in layers]
        for a in sources:
            for name, part in (("object", 1), ("background", 2)):
                labels += [(name, a, a, layer) for layer in layers]
                conditions += [patch(name, a, part, layer, object_positions) for layer in layers]
        probs = engine.logits(x, conditions)[:, -1].float().softmax(dim=-1)
        top = probs.argmax(dim=-1).tolist()
        outcome = dict(zip(labels, zip(top, probs)))
        target_category = str(usable["category_name"].iloc[b])
        target_piece = pieces.name_piece[target_category]
        for a in sources:
            source_category = str(usable["category_name"].iloc[a])
            source_piece = pieces.name_piece[source_category]
            for name, owner, source, layer in labels:
                if owner not in (None, a):
                    continue
                token, p = outcome[name, owner, source, layer]
                rows.append({"target_image_id": int(usable["image_id"].iloc[b]), "target_category": target_category,
                             "source_image_id": int(usable["image_id"].iloc[a]), "source_category": source_category,
                             "condition": name, "layer": layer,
                             "patched_from": -1 if source is None else int(usable["image_id"].iloc[source]),
                             "n_patched": 0 if name == "none" else len(object_positions),
                             "answer": tokenizer.decode([token]), "becomes_source": token == source_piece,
                             "keeps_target": token == target_piece, "p_source": float(p[source_piece]),
                             "p_target": float(p[target_piece]), "n_categories": n_categories, "excluded": ""})
    return pd.DataFrame(rows, columns=COLUMNS)


def _included(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["excluded"].fillna("").astype(str) == ""]


def summarize_patching(table: pd.DataFrame, *, seed: int = 0, n_resamples: int = 2000) -> pd.DataFrame:
    """Per measure x condition x layer over the included pairs: the share of pairs whose answer
    becomes A's object (becomes_source) or stays B's (keeps_target), a 95% bootstrap interval that
    resamples target images B (a B's pairs are not independent), the pairs `n`, the targets
    `n_targets`, and `chance`: 1 / n_categories, a guess among the eligible categories."""
    from vlminterp.stats import cluster_bootstrap_ci

    rows = []
    for measure in MEASURES:
        for (condition, layer), group in _included(table).groupby(["condition", "layer"], sort=True):
            values = group[measure].astype(float).to_numpy()
            low, high = cluster_bootstrap_ci(values, group["target_image_id"], seed=seed, n_resamples=n_resamples)
            rows.append({"measure": measure, "condition": condition, "layer": int(layer), "mean": float(values.mean()),
                         "low": low, "high": high, "n": len(values), "n_targets": group["target_image_id"].nunique(),
                         "chance": 1.0 / int(group["n_categories"].iloc[0])})
    return pd.DataFrame(rows, columns=["measure", "condition", "layer", "mean", "low", "high", "n", "n_targets",
                                       "chance"])


def patching_by_category(table: pd.DataFrame) -> pd.DataFrame:
    """Per (source category, target category) x condition x layer over the included pairs: pairs
    `n`, the counts and shares of becomes_source and keeps_target, and `chance` (as the summary's)."""
    included = _included(table)
    keys = ["source_category", "target_category", "condition", "layer"]
    grouped = included.groupby(keys, sort=True)
    out = grouped.size().rename("n").reset_index()
    for measure in MEASURES:
        counts = grouped[measure].sum().astype(int).to_numpy()
        out[f"{measure}_count"] = counts
        out[measure] = counts / out["n"]
    out["chance"] = 1.0 / grouped["n_categories"].first().to_numpy()
    return out


def patching_stage(*, session: dict, spec: dict, prompts: dict, selection, cells, seed: int,
                   questions=None) -> pd.DataFrame:
    """Rule patch_object_tokens: the patching table of the run's Neo targets (config section `patching`)."""
    from vlminterp.experiments.neo.prompts import PromptSpec
    from vlminterp.experiments.shared.session import Session, StageConfig
    from vlminterp.experiments.shared.cells import cells_by_image
    from vlminterp.io import read_table
    from vlminterp.specs import build_spec

    patching = build_spec(PatchingSpec, spec, where="patching", seed=seed)
    opened = Session.open(build_spec(StageConfig, {**session, "stage": "object patching",
                                                   "batch_size": patching.batch_size}, where="session"))
    prompt_spec = build_spec(PromptSpec, prompts, where="neo.prompts",
                             **({"vqa_questions_file": str(questions)} if questions else {}))
    return run_patching(opened, read_table(selection), patching,
                        cells=cells_by_image(read_table(cells)), prompts=prompt_spec)


def summary_stage(*, table, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rule summarize_object_patching: the summary of the patching table and its per-category breakdown."""
    from vlminterp.io import read_table

    patching = read_table(table)
    return summarize_patching(patching, seed=seed), patching_by_category(patching)
