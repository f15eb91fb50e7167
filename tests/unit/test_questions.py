"""POPE-style questions: hand-computed popular/adversarial picks, balance, determinism, edge cases."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from cocofixtures import CocoBuilder

from vlminterp.data.coco import CocoDataset
from vlminterp.data.questions import (NEGATIVE_STRATEGIES, QUESTION_COLUMNS, build_pope_questions,
                                      category_cooccurrence, pope_setting)

# image -> categories present (9 holds all, 8 none); images per category: 1:5, 2:3, 3:3, 4:2, 5:4, 6:3
HAND_IMAGES = {1: {1, 2}, 2: {1, 3}, 3: {1, 3}, 4: {1, 4}, 5: {5, 6}, 6: {5, 6}, 7: {2, 5},
               8: set(), 9: {1, 2, 3, 4, 5, 6}}
NAMES = {1: "cat", 2: "dog", 3: "traffic light", 4: "kite", 5: "car", 6: "bus"}


def _write(tmp_path, images: dict[int, set[int]], names: dict[int, str]) -> CocoDataset:
    b = CocoBuilder()
    for cid, name in names.items():
        b.category(name, category_id=cid)
    for image_id, cats in images.items():
        b.image(16, 16, image_id=image_id)
        for cid in sorted(cats):
            b.box(image_id, cid, 1, 1, 4, 4)
    return CocoDataset.load(b.write(tmp_path), split="train")


@pytest.fixture
def hand_dataset(tmp_path) -> CocoDataset:
    return _write(tmp_path, HAND_IMAGES, NAMES)


def _picked(table, image_id, negative_type):
    rows = table[(table["image_id"] == image_id) & (table["negative_type"] == negative_type)]
    return rows["category_id"].tolist()


def test_cooccurrence_matches_set_counts(hand_dataset):
    ids, matrix = category_cooccurrence(hand_dataset)
    assert ids == sorted(NAMES)
    for (a, ia), (b, ib) in itertools.product(zip(ids, range(6)), repeat=2):
        assert matrix[ia, ib] == sum(a in cats and b in cats for cats in HAND_IMAGES.values())


def test_hand_computed_negatives(hand_dataset):
    table = build_pope_questions(hand_dataset, [7, 4], n_per_image=2, seed=0)
    # image 7 {dog, car}: absent 1, 3, 4, 6
    assert _picked(table, 7, "positive") == [2, 5]
    assert _picked(table, 7, "popular") == [1, 3]       # 1 in 5 images; 3 and 6 tie at 3 -> lower id
    assert _picked(table, 7, "adversarial") == [6, 1]   # co-occurrence scores 6: 4, 1: 3, 3: 2, 4: 2
    # image 4 {cat, kite}: absent 2, 3, 5, 6
    assert _picked(table, 4, "popular") == [5, 2]
    assert _picked(table, 4, "adversarial") == [3, 2]   # scores 3: 4, 2: 3, 5: 2, 6: 2
    assert set(_picked(table, 4, "random")) <= {2, 3, 5, 6}
    assert table["image_id"].tolist()[:1] == [7]        # rows follow the given image order


def test_columns_text_and_answers(hand_dataset):
    table = build_pope_questions(hand_dataset, [2], n_per_image=1, seed=0)
    assert list(table.columns) == list(QUESTION_COLUMNS)
    assert table["question_id"].tolist() == list(range(len(table)))
    assert table["negative_type"].tolist() == ["positive", *NEGATIVE_STRATEGIES]
    assert table["answer"].tolist() == ["yes", "no", "no", "no"]
    positive = table.iloc[0]
    assert positive["category"] == NAMES[positive["category_id"]]
    assert positive["question"] == f"Is there a {positive['category']} in this image?"
    custom = build_pope_questions(hand_dataset, [2], 1, seed=0, template="Do you see a {name}?")
    assert custom["question"].str.startswith("Do you see a ").all()
    with pytest.raises(ValueError, match="template"):
        build_pope_questions(hand_dataset, [2], 1, seed=0, template="Is there a {object}?")


def test_too_few_categories_shrink_or_skip(hand_dataset):
    table = build_pope_questions(hand_dataset, [1, 8, 9], n_per_image=5, seed=0)
    assert set(table["image_id"]) == {1}  # 8 has no annotations, 9 has every category
    for strategy in NEGATIVE_STRATEGIES:
        assert len(_picked(table, 1, strategy)) == 2  # k = min(5, 2 present, 4 absent)
    empty = build_pope_questions(hand_dataset, [8], n_per_image=3, seed=0)
    assert empty.empty and list(empty.columns) == list(QUESTION_COLUMNS)


def test_errors(hand_dataset):
    with pytest.raises(KeyError, match="image id 99"):
        build_pope_questions(hand_dataset, [99], 1, seed=0)
    with pytest.raises(ValueError, match="duplicates"):
        build_pope_questions(hand_dataset, [1, 1], 1, seed=0)
    with pytest.raises(ValueError, match="n_per_image"):
        build_pope_questions(hand_dataset, [1], 0, seed=0)
    with pytest.raises(ValueError, match="strategy"):
        pope_setting(build_pope_questions(hand_dataset, [1], 1, seed=0), "hard")


@pytest.fixture
def random_dataset(tmp_path) -> CocoDataset:
    rng = np.random.default_rng(5)
    names = {cid: f"object{cid}" for cid in range(1, 13)}
    images = {iid: {int(c) for c in rng.choice(12, size=rng.integers(1, 6), replace=False) + 1}
              for iid in range(1, 41)}
    return _write(tmp_path, images, names)


def test_balanced_correct_and_deterministic(random_dataset):
    ids = random_dataset.image_ids()
    table = build_pope_questions(random_dataset, ids, n_per_image=3, seed=11)
    for image_id, rows in table.groupby("image_id"):
        present = random_dataset.image_categories(image_id)
        yes = rows[rows["answer"] == "yes"]
        assert set(yes["category_id"]) <= present and yes["category_id"].is_unique
        assert not set(rows.loc[rows["answer"] == "no", "category_id"]) & present
        for strategy in NEGATIVE_STRATEGIES:
            setting = pope_setting(rows, strategy)
            assert (setting["answer"] == "yes").sum() == (setting["answer"] == "no").sum() > 0
            assert setting["category_id"].is_unique
    assert table.equals(build_pope_questions(random_dataset, ids, n_per_image=3, seed=11))
    other = build_pope_questions(random_dataset, ids, n_per_image=3, seed=12)
    assert not table.equals(other)
    assert (table["negative_type"] == "popular").equals(other["negative_type"] == "popular")


def test_image_questions_do_not_depend_on_other_images(random_dataset):
    ids = random_dataset.image_ids()
    full = build_pope_questions(random_dataset, ids, n_per_image=2, seed=3)
    alone = build_pope_questions(random_dataset, [ids[17]], n_per_image=2, seed=3)
    subset = full[full["image_id"] == ids[17]].drop(columns="question_id").reset_index(drop=True)
    assert subset.equals(alone.drop(columns="question_id"))
