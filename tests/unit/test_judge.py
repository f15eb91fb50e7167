"""Tests of the offline judge: set precision/recall/F1 of object mentions, its 0/0 conventions, tables."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from vlminterp.io import read_table, write_table
from vlminterp.scoring.judge import (SCORE_COLUMNS, Score, judge_table, objects_mentioned, score_against_annotations,
                                     score_description, score_sets)
from vlminterp.scoring.vocabulary import load_vocabulary

VOCAB = {"dog": ["puppy"], "cat": ["kitten"], "couch": ["sofa"], "hot dog": ["hotdog"], "person": ["man", "men"]}


@pytest.fixture(scope="module")
def coco():
    return load_vocabulary("coco")


def test_objects_mentioned():
    assert objects_mentioned("Two puppies on a sofa eat a hot dog.", VOCAB) == {"dog", "couch", "hot dog"}
    assert objects_mentioned("", VOCAB) == set()
    assert objects_mentioned(None, VOCAB) == set()


@pytest.mark.parametrize("text", [
    "A man on a sofa with a puppy and a kitten.", "There is a red circle.", "dogs dogs dogs", "",
])
def test_identical_descriptions_score_one(text):
    s = score_description(text, text, VOCAB)
    assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)
    assert s.hallucinated == () and s.missed == ()


def test_partial_overlap():
    s = score_description("A puppy on a sofa next to a man.", "A dog, a kitten and a couch.", VOCAB)
    assert s == Score(precision=2 / 3, recall=2 / 3, f1=pytest.approx(2 / 3), n_candidate=3, n_reference=3,
                      matched=("couch", "dog"), hallucinated=("person",), missed=("cat",))
    s = score_description("A dog.", "A dog and a cat.", VOCAB)
    assert (s.precision, s.recall, s.f1) == (1.0, 0.5, pytest.approx(2 / 3))


def test_set_semantics_ignore_repetition_and_wording():
    a = score_description("A dog. Another dog. The puppy sleeps.", "Puppies!", VOCAB)
    assert (a.f1, a.n_candidate, a.n_reference) == (1.0, 1, 1)


def test_empty_candidate_against_nonempty_reference_scores_zero():
    s = score_description("", "A dog on a sofa.", VOCAB)
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)
    assert (s.n_candidate, s.n_reference, s.missed) == (0, 2, ("couch", "dog"))
    # a description that names no vocabulary object is empty too
    assert score_description("It is very nice.", "A dog.", VOCAB).f1 == 0.0


def test_nonempty_candidate_against_empty_reference_scores_zero():
    s = score_description("A dog.", "Nothing to see.", VOCAB)
    assert (s.precision, s.recall, s.f1, s.hallucinated) == (0.0, 0.0, 0.0, ("dog",))


def test_both_empty_scores_one_and_is_flagged_by_n_reference():
    s = score_description("Blank.", "", VOCAB)
    assert (s.precision, s.recall, s.f1, s.n_candidate, s.n_reference) == (1.0, 1.0, 1.0, 0, 0)


def test_no_overlap_is_zero_not_nan():
    s = score_sets({"dog"}, {"cat"})
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)
    assert not any(math.isnan(v) for v in (s.precision, s.recall, s.f1))


def test_hot_dog_is_not_a_dog(coco):
    s = score_description("A man eats a hot dog.", "A man walks a dog.", coco)
    assert s.matched == ("person",) and s.hallucinated == ("hot dog",) and s.missed == ("dog",)


def test_score_against_annotations(coco):
    s = score_against_annotations("A puppy sleeps on a sofa near a TV.", {"dog", "couch", "remote"}, coco)
    assert (s.matched, s.hallucinated, s.missed) == (("couch", "dog"), ("tv",), ("remote",))
    assert (s.precision, s.recall) == (2 / 3, 2 / 3)
    assert score_against_annotations("", set(), coco).f1 == 1.0
    with pytest.raises(ValueError, match="unicorn"):
        score_against_annotations("A dog.", {"unicorn"}, coco)


def test_judge_table_long_format_roundtrip(tmp_path):
    ref = "A puppy on a sofa."
    df = pd.DataFrame({
        "image_id": [1, 1, 1, 2],
        "condition": ["none", "image->generated", "image->query", "none"],
        "description": [ref, "A dog.", "", "Nothing."],
        "reference": [ref, ref, ref, "Nothing."],
    })
    out = judge_table(df, "description", "reference", VOCAB)
    assert list(out.columns) == list(df.columns) + list(SCORE_COLUMNS)
    assert out["f1"].tolist() == [1.0, pytest.approx(2 / 3), 0.0, 1.0]
    assert out["precision"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert out["n_reference"].tolist() == [2, 2, 2, 0]
    assert out["missed"].tolist() == ["", "couch", "couch;dog", ""]
    assert df.columns.tolist() == ["image_id", "condition", "description", "reference"]  # input untouched
    path = tmp_path / "k2.csv"
    write_table(out, path)
    again = read_table(path)  # empty strings come back as NaN: still judged as empty descriptions
    rejudged = judge_table(again.drop(columns=list(SCORE_COLUMNS)), "description", "reference", VOCAB)
    assert rejudged["f1"].tolist() == out["f1"].tolist()


def test_judge_table_against_categories(coco):
    df = pd.DataFrame({"description": ["A dog on a couch.", "A cat."],
                       "categories": [["dog", "couch"], "cat;remote"]})
    out = judge_table(df, "description", "categories", coco, reference_kind="categories")
    assert out["recall"].tolist() == [1.0, 0.5]
    assert out["missed"].tolist() == ["", "remote"]


def test_judge_table_errors_and_empty():
    df = pd.DataFrame({"a": ["x"], "b": ["y"]})
    with pytest.raises(KeyError, match="nope"):
        judge_table(df, "a", "nope", VOCAB)
    with pytest.raises(ValueError, match="reference_kind"):
        judge_table(df, "a", "b", VOCAB, reference_kind="text")
    with pytest.raises(ValueError, match="already"):
        judge_table(df.assign(f1=0.0), "a", "b", VOCAB)
    with pytest.raises(TypeError, match="string"):
        judge_table(pd.DataFrame({"a": [3], "b": ["y"]}), "a", "b", VOCAB)
    empty = judge_table(df.iloc[:0], "a", "b", VOCAB)
    assert list(empty.columns) == ["a", "b", *SCORE_COLUMNS] and len(empty) == 0
    assert empty["f1"].dtype == float
