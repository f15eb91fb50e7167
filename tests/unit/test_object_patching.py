"""Object patching's pairing and summary (vlminterp.experiments.object_patching), against plain
counts written out here."""
from __future__ import annotations

import numpy as np
import pandas as pd

from vlminterp.experiments.object_patching import pairs, summarize_patching


def test_pairs_take_a_source_of_another_category_and_a_control_of_the_same():
    targets = pd.DataFrame({"category_name": ["circle", "square", "circle", "cross", "square", "star"]})
    found = pairs(targets, n_pairs=10, seed=3)
    names = targets["category_name"].tolist()
    assert len(found) == len(targets)   # every category has another one to pair with
    for b, a, c in found:
        assert names[a] != names[b]
        if names[b] == "cross" or names[b] == "star":
            assert c is None            # the only target of its category
        else:
            assert c != b and names[c] == names[b]
    assert pairs(targets, n_pairs=2, seed=3) == found[:2] and pairs(targets, 10, seed=3) == found


def test_one_category_gives_no_pair():
    assert pairs(pd.DataFrame({"category_name": ["circle"] * 4}), n_pairs=4, seed=0) == []


def test_summary_shares_are_the_counts_per_condition_and_layer():
    table = pd.DataFrame({"condition": ["none", "object", "object", "object", "object"],
                          "layer": [-1, 0, 0, 1, 1],
                          "becomes_source": [False, True, True, False, True],
                          "keeps_target": [True, False, False, True, False]})
    summary = summarize_patching(table, seed=0, n_resamples=200).set_index(["measure", "condition", "layer"])
    assert summary.loc[("becomes_source", "object", 0), "mean"] == 1.0
    assert summary.loc[("becomes_source", "object", 1), "mean"] == 0.5
    assert summary.loc[("keeps_target", "none", -1), "n"] == 1
    assert np.all(summary["low"] <= summary["mean"]) and np.all(summary["mean"] <= summary["high"])
