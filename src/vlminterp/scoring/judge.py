"""The offline judge (K2): score a knocked-out description by the objects it shares with a reference.

    from vlminterp.scoring.judge import score_description, score_against_annotations, judge_table
    from vlminterp.scoring.vocabulary import load_vocabulary
    coco = load_vocabulary("coco")
    s = score_description("A dog on a sofa.", "A puppy on a couch next to a cat.", coco)
    # Score(precision=1.0, recall=0.667, f1=0.8, n_candidate=2, n_reference=3,
    #       matched=('couch', 'dog'), hallucinated=(), missed=('cat',))
    score_against_annotations("A dog on a sofa.", {"dog", "couch", "remote"}, coco)
    table = judge_table(df, "description", "reference_description", coco)   # + precision, recall, f1, ...

Objects are the *categories* a text mentions (``vlminterp.scoring.mentions``: whole words, any
case, plurals, synonyms, longest match first), counted once each: a set, not a multiset.
The reference is the same model's unablated description (K2), or the image's ground-truth
categories. precision = |cand & ref| / |cand|, recall = |cand & ref| / |ref|, F1 their harmonic mean.

Conventions where a ratio is 0/0 (fixed, so tables from different runs agree):
- candidate and reference both mention objects: the formulas above.
- exactly one side mentions no object: precision = recall = F1 = 0.0. An emptied description
  (the K2 "image->query" knockout) scores 0, never NaN, so condition means count it; a candidate
  that names objects the reference lacks entirely has precision 0 anyway, recall is set to 0.
- neither side mentions an object: precision = recall = F1 = 1.0 (the two agree completely, and
  an identical description always scores 1). Such rows carry ``n_reference == 0``; filter on it
  to keep only images whose reference names something.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Literal

import pandas as pd

from vlminterp.scoring.vocabulary import VocabularyLike, as_vocabulary

#: Columns ``judge_table`` adds, in order.
SCORE_COLUMNS: tuple[str, ...] = ("precision", "recall", "f1", "n_candidate", "n_reference",
                                  "matched", "hallucinated", "missed")
#: Separator of the category lists in ``judge_table``'s matched/hallucinated/missed columns.
LIST_SEPARATOR = ";"


@dataclass(frozen=True)
class Score:
    """Set-overlap score of a candidate's objects against a reference's.

    ``matched`` are in both, ``hallucinated`` only in the candidate, ``missed`` only in the
    reference; each a sorted tuple of category names.
    """

    precision: float
    recall: float
    f1: float
    n_candidate: int
    n_reference: int
    matched: tuple[str, ...]
    hallucinated: tuple[str, ...]
    missed: tuple[str, ...]

    def as_row(self) -> dict[str, Any]:
        """A flat dict for a table row: the category tuples joined with ``LIST_SEPARATOR``."""
        row = asdict(self)
        for key in ("matched", "hallucinated", "missed"):
            row[key] = LIST_SEPARATOR.join(row[key])
        return row


def score_sets(candidate: Iterable[str], reference: Iterable[str]) -> Score:
    """Precision/recall/F1 of two sets of object names (the conventions in the module docstring)."""
    cand, ref = set(candidate), set(reference)
    matched = cand & ref
    if not cand and not ref:
        precision = recall = f1 = 1.0
    elif not cand or not ref:
        precision = recall = f1 = 0.0
    else:
        precision = len(matched) / len(cand)
        recall = len(matched) / len(ref)
        f1 = 0.0 if not matched else 2 * precision * recall / (precision + recall)
    return Score(precision, recall, f1, len(cand), len(ref),
                 tuple(sorted(matched)), tuple(sorted(cand - ref)), tuple(sorted(ref - cand)))


def objects_mentioned(text: str, vocabulary: VocabularyLike) -> set[str]:
    """The categories ``text`` mentions (empty for an empty or missing text)."""
    return as_vocabulary(vocabulary).categories_in(_text(text))


def score_description(candidate: str, reference: str, vocabulary: VocabularyLike) -> Score:
    """Score a (knocked-out) description against a reference description of the same image."""
    vocab = as_vocabulary(vocabulary)
    return score_sets(vocab.categories_in(_text(candidate)), vocab.categories_in(_text(reference)))


def score_against_annotations(candidate: str, gt_categories: Iterable[str], vocabulary: VocabularyLike) -> Score:
    """Score a description against the image's ground-truth categories (names in ``vocabulary``).

    A ground-truth category the vocabulary does not know could never be matched, so it raises
    (extend the vocabulary with ``load_vocabulary(..., categories=...)``).
    """
    vocab = as_vocabulary(vocabulary)
    truth = _categories(gt_categories)
    unknown = sorted(truth - set(vocab.categories))
    if unknown:
        raise ValueError(f"ground-truth categories {unknown} are not in vocabulary {vocab.name!r}")
    return score_sets(vocab.categories_in(_text(candidate)), truth)


def check_judge_columns(df: pd.DataFrame, text_columns: Iterable[str], score_columns: Iterable[str]) -> None:
    """A table to judge has its text columns (KeyError otherwise) and none of the score columns yet."""
    for col in text_columns:
        if col not in df.columns:
            raise KeyError(f"column {col!r} not in table (columns: {list(df.columns)})")
    clash = [c for c in score_columns if c in df.columns]
    if clash:
        raise ValueError(f"table already has score column(s) {clash}")


def judge_table(df: pd.DataFrame, candidate_col: str, reference_col: str, vocabulary: VocabularyLike, *,
                reference_kind: Literal["description", "categories"] = "description") -> pd.DataFrame:
    """A copy of ``df`` (one row per image x condition, long format) with ``SCORE_COLUMNS`` added.

    ``reference_kind="description"``: ``reference_col`` holds reference texts (K2: the unablated
    description, repeated on every condition's row). ``"categories"``: it holds ground-truth
    categories, as a list/set/tuple or a ``LIST_SEPARATOR``-joined string. Missing texts (None,
    NaN, as ``read_csv`` gives for an empty string) count as empty descriptions.
    """
    check_judge_columns(df, (candidate_col, reference_col), SCORE_COLUMNS)
    if reference_kind not in ("description", "categories"):
        raise ValueError(f"reference_kind must be 'description' or 'categories', got {reference_kind!r}")
    vocab = as_vocabulary(vocabulary)
    memo: dict[str, frozenset[str]] = {}  # the reference repeats across conditions: match it once

    def objects(text: Any) -> frozenset[str]:
        text = _text(text)
        if text not in memo:
            memo[text] = frozenset(vocab.categories_in(text))
        return memo[text]

    rows = []
    for cand, ref in zip(df[candidate_col], df[reference_col]):
        if reference_kind == "description":
            rows.append(score_sets(objects(cand), objects(ref)).as_row())
        else:
            rows.append(score_against_annotations(_text(cand), _categories(ref), vocab).as_row())
    scores = pd.DataFrame(rows, columns=list(SCORE_COLUMNS), index=df.index)
    if scores.empty:
        scores = scores.astype({"precision": float, "recall": float, "f1": float,
                                "n_candidate": int, "n_reference": int})
    return pd.concat([df, scores], axis=1)


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, str):
        raise TypeError(f"a description must be a string, got {type(value).__name__}: {value!r}")
    return value


def _categories(value: Any) -> set[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return set()
    if isinstance(value, str):
        return {c.strip() for c in value.split(LIST_SEPARATOR) if c.strip()}
    return set(value)
