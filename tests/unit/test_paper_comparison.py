"""paper_comparison.csv: the papers' headline numbers beside a run's, read from hand-made tables
whose expected values are counted by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd

from vlminterp.experiments.paper_comparison import COLUMNS, ORGANISM_NOTE, RunTables, paper_comparison


def _ablation() -> pd.DataFrame:
    rows = []
    for image in range(4):
        for condition, flipped in (("object_b1", image < 3), ("random_matched_b1", False)):
            rows.append({"image_id": image, "setting": "generative", "condition": condition, "included": True,
                         "flipped": flipped, "n_tokens": 4})
    return pd.DataFrame(rows)


def _knockout() -> pd.DataFrame:
    return pd.DataFrame([
        {"condition": "image->generated", "family": "all_layers", "target": "generated", "layer_start": 0,
         "layer_end": 15, "mean": 0.3, "low": 0.2, "high": 0.4, "n_images": 5},
        {"condition": "fixed 2-10 (generated)", "family": "fixed_window", "target": "generated", "layer_start": 2,
         "layer_end": 10, "mean": 0.8, "low": 0.7, "high": 0.9, "n_images": 5},
        {"condition": "fixed 2-10 (query)", "family": "fixed_window", "target": "query", "layer_start": 2,
         "layer_end": 10, "mean": 0.1, "low": 0.0, "high": 0.2, "n_images": 5},
    ])


def _peaks(n_layers: int = 16) -> pd.DataFrame:
    """One mention of image 1, a hit in the first half of the layers only."""
    return pd.DataFrame([{"image_id": 1, "mention": 0, "layer": l, "head": -1, "hit": l < n_layers // 2,
                          "chance": 0.1, "excluded": ""} for l in range(n_layers)])


def _reprompt() -> pd.DataFrame:
    return pd.DataFrame([
        {"method": "full_image", "k_fraction": np.nan, "setting": "all", "accuracy": 0.9, "accuracy_low": 0.8,
         "accuracy_high": 1.0, "n_questions": 30},
        {"method": "prompt_image_topk", "k_fraction": 0.02, "setting": "all", "accuracy": 0.6, "accuracy_low": 0.5,
         "accuracy_high": 0.7, "n_questions": 30},
        {"method": "prompt_image_topk", "k_fraction": 0.05, "setting": "all", "accuracy": 0.7, "accuracy_low": 0.6,
         "accuracy_high": 0.8, "n_questions": 30},
        {"method": "prompt_cache", "k_fraction": np.nan, "setting": "random", "accuracy": 0.5, "accuracy_low": 0.4,
         "accuracy_high": 0.6, "n_questions": 20},
    ])


def test_paper_comparison_reads_each_headline_from_the_run_tables():
    tables = RunTables(_ablation(), _knockout(), _peaks(), _reprompt())
    table = paper_comparison(tables, model="llava-hf/llava-1.5-7b-hf", organism=False)
    assert list(table.columns) == list(COLUMNS)
    by = table.set_index(["experiment", "condition"])
    n1 = by.loc[("N1", "object_b1")]
    assert n1["setting"] == "generative" and n1["value"] == 0.75 and n1["n"] == 4  # 3 of 4 flipped
    assert (n1["paper_value"], n1["relation"]) == (0.70, ">")
    assert by.loc[("N1", "random_matched_b1")]["value"] == 0.0
    assert np.isnan(table[(table["experiment"] == "N1") & (table["condition"] == "register")]["value"]).all()
    k2 = by.loc[("K2", "image->generated")]
    assert (k2["paper_value"], k2["value"], k2["low"], k2["high"], k2["n"]) == (0.40, 0.3, 0.2, 0.4, 5)
    assert by.loc[("K2", "fixed 2-10 (generated)")]["value"] == 0.8  # the generated target, not the query one
    assert "no image->query" in by.loc[("K2", "image->query")]["note"]
    k3 = table[table["experiment"] == "K3"].reset_index(drop=True)
    # 16 layers: paper band i (layers 10i..10i+9 of 80) is the same eighth of the depth: layers 2i, 2i+1.
    assert k3["setting"].tolist() == [f"layers {2 * i}-{2 * i + 1} of 16" for i in range(5)]
    assert k3["value"].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0] and k3["paper_value"].tolist() == [0.30, 0.45, 0.65,
                                                                                                 0.73, 0.60]
    k4 = table[table["experiment"] == "K4"].set_index("condition")
    assert k4.loc["full_image", "value"] == 0.9 and k4.loc["full_image", "paper_value"] == 0.8483
    assert k4.loc["prompt_image_topk 5%", "value"] == 0.7 and k4.loc["prompt_image_topk 5%", "paper_value"] == 0.8146
    assert np.isnan(k4.loc["prompt_cache", "value"])  # only a "random" row: no "all" setting for it
    assert (table["model"] == "llava-hf/llava-1.5-7b-hf").all() and not table["note"].str.contains("organism").any()


def test_on_the_organism_every_row_says_it_is_not_llava_and_missing_bands_are_explained():
    tables = RunTables(_ablation(), _knockout(), _peaks(2), _reprompt())
    table = paper_comparison(tables, model="shapes organism", organism=True)
    assert table["note"].str.startswith(ORGANISM_NOTE).all()
    k3 = table[table["experiment"] == "K3"]
    # 2 layers: layer 0 is in the first eighth, layer 1 in the fifth; bands 1-3 hold no layer.
    assert k3["value"].isna().tolist() == [False, True, True, True, False]
    assert k3["note"].str.contains("no layer of this model").sum() == 3
