"""The method-validation table (issue #24): which K2 / N3 / K4 results a planted routing fixes, and
the pass/fail of each."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlminterp.data.questions import NEGATIVE_STRATEGIES
from vlminterp.experiments.kaduri.reprompt import summarize_reprompting
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


def _reprompt_summary(prompt_wrong: int):
    """K4's summary as `summarize_reprompting` writes it: 8 images, a positive and one negative of each
    POPE strategy per image; the full image answers all right, the prompt's cache misses
    `prompt_wrong` positives."""
    rows = []
    for method in ("single_turn", "full_image", "prompt_cache"):
        for image in range(8):
            for q, negative in enumerate(("positive", *NEGATIVE_STRATEGIES)):
                answer = "yes" if negative == "positive" else "no"
                predicted = "no" if method == "prompt_cache" and negative == "positive" and image < prompt_wrong else answer
                rows.append({"method": method, "k_fraction": np.nan, "image_id": image, "question_id": image * 4 + q,
                             "negative_type": negative, "answer": answer, "predicted": predicted,
                             "correct": answer == predicted, "k_tokens": -1, "context_tokens": 10, "input_tokens": 12})
    return summarize_reprompting(pd.DataFrame(rows))


def test_k4_prompt_cache_equals_the_full_image_in_query_routed():
    """Read from the summary K4 writes (the mean of the POPE strategies), never dropped silently."""
    equal, apart = _reprompt_summary(0), _reprompt_summary(6)
    row = method_validation(_tables(reprompt=equal), Planted("query_routed", (), 4)).query("method == 'K4'").iloc[0]
    assert row["expected"] == "equal" and row["passed"] and row["value"] == 1.0
    assert row["note"].endswith("full image 1.000; single turn 1.000")
    row = method_validation(_tables(reprompt=apart), Planted("query_routed", (), 4)).query("method == 'K4'").iloc[0]
    # 6 of 8 positives missed: each missed positive weighs as the image's three negatives together
    assert np.isclose(row["value"], 1 - 6 / 16) and row["passed"] == False  # noqa: E712
    row = method_validation(_tables(reprompt=apart), Planted("direct", (), 4)).query("method == 'K4'").iloc[0]
    assert row["expected"] == "none" and row["passed"] is None and np.isclose(row["value"], 1 - 6 / 16)
    with pytest.raises(ValueError, match="K4 summary.*prompt_cache"):
        method_validation(_tables(reprompt=equal[equal["method"] != "prompt_cache"]), Planted("query_routed", (), 4))


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
