"""Object patching in the tiny run (the shared `tiny_run`, no DAG of its own): its unpatched readout
is N1's unablated VQA readout of the same images (the same question, prefix and top-1 piece),
computed by another stage; its summary and figure are there."""
from __future__ import annotations

import pytest
import yaml

from snakemake_runner import TINY_CONFIG
from vlminterp.io import read_table

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

RUN = yaml.safe_load(TINY_CONFIG.read_text())["run"]


def test_unpatched_answers_are_n1s_unablated_vqa_answers(tiny_run):
    out = tiny_run / "results" / RUN
    patching, ablation = read_table(out / "patching" / "patching.csv"), read_table(out / "neo" / "ablation" / "ablation.csv")
    studied = patching[patching["excluded"].fillna("") == ""]
    unpatched = studied[studied["condition"] == "none"].drop_duplicates("target_image_id").set_index("target_image_id")
    n1 = ablation[(ablation["setting"] == "vqa") & (ablation["condition"] == "none")].set_index("image_id")
    # by default every target is studied or excluded with its reason, as in N1's VQA setting
    assert set(patching["target_image_id"]) == set(n1.index)
    excluded = patching[patching["excluded"].fillna("") != ""].set_index("target_image_id")["excluded"]
    assert set(excluded.index).isdisjoint(unpatched.index)
    assert set(n1.loc[n1["excluded"].fillna("") != ""].index) <= set(excluded.index)
    assert unpatched["answer"].to_dict() == n1.loc[unpatched.index, "answer"].to_dict()
    assert unpatched["keeps_target"].to_dict() == n1.loc[unpatched.index, "success"].astype(bool).to_dict()
    for name in ("summary.csv", "by_category.csv", "patching.png"):
        assert (out / "patching" / name).is_file()
