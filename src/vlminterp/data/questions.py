"""POPE-style yes/no object questions from COCO annotations (the MME stand-in of Kaduri et al., K4).

    from vlminterp.data.questions import build_pope_questions, pope_setting

    questions = build_pope_questions(ds, image_ids, n_per_image=3, seed=0)
    adversarial = pope_setting(questions, "adversarial")   # positives + adversarial negatives

Design (after POPE, Li et al. 2023). For each image let k = min(n_per_image, #categories present,
#categories absent). The image gets k positive questions ("yes"; k of its present categories,
a seeded sample) and, for each negative strategy, k negative questions ("no"; categories absent
from the image):
    random       k absent categories drawn uniformly (seeded);
    popular      the k absent categories present in the most images of the dataset;
    adversarial  the k absent categories that co-occur most with the image's categories, scored
                 as the sum over present categories p of #images containing both p and c.
Ties are broken by dataset popularity, then by category id, so popular and adversarial need no
seed. The positives are shared by the three strategies: a POPE *setting* s is the positives plus
the negatives of strategy s (`pope_setting`), which is exactly balanced, k yes and k no, for every
image. An image with k = 0 (no annotations, or every category present) gives no rows. Counts are
over the whole split the dataset was loaded with. Each image draws from its own generator seeded
by (seed, image_id), so an image's questions do not depend on which other images are asked.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from vlminterp.data.coco import CocoDataset

NEGATIVE_STRATEGIES = ("random", "popular", "adversarial")
QUESTION_COLUMNS = ("question_id", "image_id", "question", "category_id", "category", "answer",
                    "negative_type")
DEFAULT_TEMPLATE = "Is there a {name} in this image?"


def category_cooccurrence(dataset: CocoDataset) -> tuple[list[int], np.ndarray]:
    """(category ids sorted, matrix C) with C[a, b] = #images containing both categories a and b.

    The diagonal holds each category's image count (its popularity).
    """
    category_ids = sorted(dataset.category_names())
    index = {cid: k for k, cid in enumerate(category_ids)}
    presence = np.zeros((len(dataset.image_ids()), len(category_ids)), dtype=np.int64)
    for row, image_id in enumerate(dataset.image_ids()):
        for cid in dataset.image_categories(image_id):
            presence[row, index[cid]] = 1
    return category_ids, presence.T @ presence


def _ranked(candidates: Iterable[int], score: dict[int, float], popularity: dict[int, int]) -> list[int]:
    """Candidates by descending score, then descending popularity, then ascending id."""
    return sorted(candidates, key=lambda cid: (-score[cid], -popularity[cid], cid))


def _format_question(template: str, name: str) -> str:
    try:
        return template.format(name=name)
    except (KeyError, IndexError) as err:
        raise ValueError(f"question template {template!r} may use only the field {{name}}") from err


def build_pope_questions(dataset: CocoDataset, image_ids: Sequence[int], n_per_image: int,
                         seed: int, template: str = DEFAULT_TEMPLATE) -> pd.DataFrame:
    """POPE-style questions for `image_ids` (rule in the module docstring).

    Returns one row per question with columns QUESTION_COLUMNS: question_id (0..n-1 in row
    order), image_id, question, category_id, category (name as in the annotation file),
    answer ("yes"/"no"), negative_type ("positive", "random", "popular" or "adversarial").
    Rows follow `image_ids` order; within an image: positives, then random, popular, adversarial.
    """
    if n_per_image < 1:
        raise ValueError(f"n_per_image must be >= 1, got {n_per_image}")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image_ids contains duplicates")
    _format_question(template, "x")
    names = dataset.category_names()
    category_ids, cooccurrence = category_cooccurrence(dataset)
    index = {cid: k for k, cid in enumerate(category_ids)}
    popularity = {cid: int(cooccurrence[k, k]) for cid, k in index.items()}

    rows = []
    for image_id in image_ids:
        present = sorted(dataset.image_categories(image_id))  # raises KeyError for unknown ids
        absent = [cid for cid in category_ids if cid not in set(present)]
        k = min(n_per_image, len(present), len(absent))
        if k == 0:
            continue
        rng = np.random.default_rng([seed, int(image_id)])
        co_score = {cid: float(sum(cooccurrence[index[p], index[cid]] for p in present))
                    for cid in absent}
        chosen = {
            "positive": sorted(int(c) for c in rng.choice(present, size=k, replace=False)),
            "random": sorted(int(c) for c in rng.choice(absent, size=k, replace=False)),
            "popular": _ranked(absent, {cid: popularity[cid] for cid in absent}, popularity)[:k],
            "adversarial": _ranked(absent, co_score, popularity)[:k],
        }
        for negative_type, cids in chosen.items():
            for cid in cids:
                rows.append({
                    "image_id": int(image_id), "question": _format_question(template, names[cid]),
                    "category_id": cid, "category": names[cid],
                    "answer": "yes" if negative_type == "positive" else "no",
                    "negative_type": negative_type,
                })
    table = pd.DataFrame(rows, columns=[c for c in QUESTION_COLUMNS if c != "question_id"])
    table.insert(0, "question_id", np.arange(len(table), dtype=np.int64))
    return table.astype({"image_id": "int64", "category_id": "int64"})


def pope_setting(questions: pd.DataFrame, strategy: str) -> pd.DataFrame:
    """The POPE evaluation set of one negative strategy: positives plus that strategy's negatives."""
    if strategy not in NEGATIVE_STRATEGIES:
        raise ValueError(f"strategy must be one of {NEGATIVE_STRATEGIES}, got {strategy!r}")
    keep = questions["negative_type"].isin(["positive", strategy])
    return questions[keep].reset_index(drop=True)
