"""The method-validation table (issue #24): which K2 / N3 / K4 results a planted routing fixes, and
the pass/fail of each."""
from __future__ import annotations

import numpy as np
import pandas as pd

from vlminterp.experiments.method_validation import Planted, ValidationTables, k2_truth, method_validation


def _k2(condition, family, target, start, end, mean, low, high):
    return {"condition": condition, "family": family, "target": target, "layer_start": start, "layer_end": end,
            "mean": mean, "low": low, "high": high, "n_images": 10}


K2 = pd.DataFrame([
    _k2("none", "none", "", -1, -1, 1.0, 1.0, 1.0),
    _k2("image->generated", "all_layers", "", 0, 3, 1.0, 1.0, 1.0),
    _k2("image->query", "all_layers", "", 0, 3, 0.1, 0.0, 0.2),
    _k2("image->query+generated", "all_layers", "", 0, 3, 0.6, 0.55, 0.7),
    _k2("window 1-2 (query+generated)", "window", "query+generated", 1, 2, 1.0, 1.0, 1.0),
    _k2("window 0-0 (query+generated)", "window", "query+generated", 0, 0, 0.9, 0.8, 1.0),
    _k2("window 3-3 (generated)", "window", "generated", 3, 3, 0.9, 0.8, 1.0),
])
EMPTY = pd.DataFrame()


def _tables(**overrides):
    values = dict(ablation=EMPTY, blocking=EMPTY, knockout=K2, localization=EMPTY, reprompt=EMPTY)
    values.update(overrides)
    return ValidationTables(**values)


def test_query_routed_truths():
    table = method_validation(_tables(), Planted("query_routed", (), 4)).set_index("condition")
    assert table.loc["image->generated", "expected"] == "no-op" and table.loc["image->generated", "passed"]
    assert table.loc["image->query", "expected"] == "destroys" and table.loc["image->query", "passed"]
    # a no-route condition whose description survives is reported as a failure, not hidden (F1 0.55-0.7)
    assert table.loc["image->query+generated", "expected"] == "destroys"
    assert table.loc["image->query+generated", "passed"] == False  # noqa: E712
    assert table.loc["window 3-3 (generated)", "expected"] == "no-op"
    assert table.loc["window 3-3 (generated)", "passed"] == False  # noqa: E712


def test_window_truths():
    planted = Planted("window", (1, 2), 4)
    table = method_validation(_tables(), planted).set_index("condition")
    assert table.loc["window 1-2 (query+generated)", "expected"] == "no-op"  # blocked in 0 and 3 only
    assert table.loc["window 1-2 (query+generated)", "passed"]
    assert table.loc["window 0-0 (query+generated)", "expected"] == "destroys"  # the whole band blocked
    assert "image->generated" not in table.index  # no truth planted for it in window
    assert k2_truth(K2.iloc[0], planted) is None


def test_n3_outside_the_band_must_be_a_no_op():
    rows = []
    for image in range(3):
        for start, end, drop in ((0, 0, 0.0), (1, 1, 0.3), (3, 3, 0.0)):
            rows.append({"image_id": image, "block_set": "object_b0", "window": f"{start}-{end}", "window_start": start,
                         "window_end": end, "included": True, "drop": drop})
    rows.append({"image_id": 0, "block_set": "image_to_last_row", "window": "0-0", "window_start": 0, "window_end": 0,
                 "included": True, "drop": 0.5})  # image -> image: the window routing leaves it open
    blocking = pd.DataFrame(rows)
    table = method_validation(_tables(blocking=blocking), Planted("window", (1, 2), 4))
    assert (table["method"] == "N3").sum() == 1
    n3 = table[table["method"] == "N3"].iloc[0]
    assert n3["expected"] == "no-op" and n3["passed"] and n3["n"] == 3 and "0-0, 3-3" in n3["condition"]
    blocking.loc[blocking["window_start"] == 3, "drop"] = 0.01
    n3 = method_validation(_tables(blocking=blocking), Planted("window", (1, 2), 4)).query("method == 'N3'").iloc[0]
    assert n3["passed"] == False  # noqa: E712


def test_k4_prompt_cache_equals_the_full_image_in_query_routed():
    reprompt = pd.DataFrame([
        {"method": "full_image", "setting": "all", "accuracy": 0.9, "accuracy_low": 0.85, "accuracy_high": 0.95,
         "n_questions": 40},
        {"method": "prompt_cache", "setting": "all", "accuracy": 0.88, "accuracy_low": 0.8, "accuracy_high": 0.93,
         "n_questions": 40}])
    row = method_validation(_tables(reprompt=reprompt), Planted("query_routed", (), 4)).query("method == 'K4'").iloc[0]
    assert row["expected"] == "equal" and row["passed"]
    row = method_validation(_tables(reprompt=reprompt), Planted("direct", (), 4)).query("method == 'K4'").iloc[0]
    assert row["expected"] == "none" and row["passed"] is None and np.isclose(row["value"], 0.88)


def test_destroyed_means_the_same_description_for_every_image():
    """With the per-image descriptions, "destroys" is exact: no text position reads the image, so every
    image gets one description, whatever F1 a fixed description happens to score."""
    def described(texts):
        return pd.DataFrame({"image_id": range(len(texts)), "condition": "image->query+generated", "description": texts})

    planted = Planted("query_routed", (), 4)
    row = method_validation(_tables(descriptions=described(["a red circle"] * 3)), planted).set_index("condition")
    assert row.loc["image->query+generated", "passed"] and "1 distinct" in row.loc["image->query+generated", "note"]
    row = method_validation(_tables(descriptions=described(["a red circle", "a blue square", "a red circle"])),
                            planted).set_index("condition")
    assert row.loc["image->query+generated", "passed"] == False  # noqa: E712
