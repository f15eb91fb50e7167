"""Object patching's pairing, summary and per-category breakdown
(vlminterp.experiments.object_patching), against counts written out by hand here."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlminterp.experiments.object_patching import PatchingSpec, pairs, patching_by_category, summarize_patching


def test_pairs_take_a_source_of_every_other_category_and_a_control_of_the_same():
    targets = pd.DataFrame({"category_name": ["circle", "square", "circle", "cross", "square", "star"]})
    found = pairs(targets, n_pairs=None, seed=3)
    names = targets["category_name"].tolist()
    assert sorted(b for b, _, _ in found) == list(range(len(targets)))  # every target has another category
    for b, sources, c in found:
        assert sorted(names[a] for a in sources) == sorted(set(names) - {names[b]})
        if names[b] in ("cross", "star"):
            assert c is None            # the only target of its category
        else:
            assert c != b and names[c] == names[b]
    assert pairs(targets, n_pairs=2, seed=3) == found[:2]


def test_one_category_gives_no_pair():
    assert pairs(pd.DataFrame({"category_name": ["circle"] * 4}), n_pairs=None, seed=0) == []


def test_spec_takes_every_target_by_default_and_refuses_zero():
    assert PatchingSpec().n_pairs is None
    with pytest.raises(ValueError, match="n_pairs"):
        PatchingSpec(n_pairs=0)


# A hand-made table: targets 1 (circle) and 2 (square), each patched from the other at layers 0-1,
# plus an excluded target 3 (whose rows must not count) and the unpatched rows. By hand:
#   object@0: target 1 becomes square, target 2 keeps square -> becomes 1/2, keeps 1/2
#   object@1: both keep their own                             -> becomes 0/2, keeps 2/2
#   none:     both keep their own                             -> becomes 0/2, keeps 2/2
ROWS = [  # target, target category, source category, condition, layer, becomes, keeps, excluded
    (1, "circle", "square", "none", -1, False, True, ""),
    (2, "square", "circle", "none", -1, False, True, ""),
    (1, "circle", "square", "object", 0, True, False, ""),
    (2, "square", "circle", "object", 0, False, True, ""),
    (1, "circle", "square", "object", 1, False, True, ""),
    (2, "square", "circle", "object", 1, False, True, ""),
    (3, "diamond", "", "none", -1, False, False, "first piece of 'diamond' also begins a form of circle"),
]


def hand_table() -> pd.DataFrame:
    table = pd.DataFrame(ROWS, columns=["target_image_id", "target_category", "source_category", "condition",
                                        "layer", "becomes_source", "keeps_target", "excluded"])
    return table.assign(n_categories=4)


def test_summary_shares_are_the_hand_counts_with_chance():
    summary = summarize_patching(hand_table(), seed=0, n_resamples=200).set_index(["measure", "condition", "layer"])
    assert summary.loc[("becomes_source", "object", 0), "mean"] == 0.5
    assert summary.loc[("keeps_target", "object", 0), "mean"] == 0.5
    assert summary.loc[("becomes_source", "object", 1), "mean"] == 0.0
    assert summary.loc[("keeps_target", "none", -1), "mean"] == 1.0
    assert set(summary["n"]) == {2} and set(summary["n_targets"]) == {2}   # target 3 is excluded
    assert set(summary["chance"]) == {0.25}
    assert np.all(summary["low"] <= summary["mean"]) and np.all(summary["mean"] <= summary["high"])


def test_breakdown_counts_each_category_pair_by_hand():
    table = patching_by_category(hand_table()).set_index(["source_category", "target_category", "condition", "layer"])
    assert "diamond" not in set(table.index.get_level_values("target_category"))
    hit = table.loc[("square", "circle", "object", 0)]
    assert (hit["n"], hit["becomes_source_count"], hit["becomes_source"], hit["keeps_target"]) == (1, 1, 1.0, 0.0)
    miss = table.loc[("circle", "square", "object", 0)]
    assert (miss["n"], miss["becomes_source_count"], miss["keeps_target_count"]) == (1, 0, 1)
    assert len(table) == 6 and set(table["chance"]) == {0.25}
