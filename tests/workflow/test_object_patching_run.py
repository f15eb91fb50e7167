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
    unpatched = patching[patching["condition"] == "none"].set_index("target_image_id")
    n1 = ablation[(ablation["setting"] == "vqa") & (ablation["condition"] == "none")].set_index("image_id")
    assert len(unpatched) == yaml.safe_load(TINY_CONFIG.read_text()).get("patching", {}).get("n_pairs", 8)
    assert unpatched["answer"].to_dict() == n1.loc[unpatched.index, "answer"].to_dict()
    assert unpatched["keeps_target"].to_dict() == n1.loc[unpatched.index, "success"].astype(bool).to_dict()
    assert (out / "patching" / "summary.csv").is_file() and (out / "patching" / "patching.png").is_file()
