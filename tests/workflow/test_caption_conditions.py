"""A condition a figure's caption names has rows in the figure's table on the tiny run, or the
caption says when it has none (#27): "when configured" or "no bar when" in the clause naming it."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from snakemake_runner import TINY_CONFIG

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

ROOT = Path(__file__).resolve().parents[2]
RUN = yaml.safe_load(TINY_CONFIG.read_text())["run"]
# caption of a figure (workflow/rules: figure(...)) -> the table it draws and the column naming conditions
FIGURE_TABLES = {"neo_flip_rates": ("neo/ablation/ablation.csv", "condition"),
                 "neo_blocking_drops": ("neo/blocking/blocking.csv", "block_set"),
                 "knockout_conditions": ("kaduri/knockout/summary.csv", "condition"),
                 "knockout_start_layer": ("kaduri/knockout/summary.csv", "condition"),
                 "reprompting": ("kaduri/reprompt/answers.csv", "method")}
# an identifier with an underscore (object_b{b}: {b} stands for a number), a K2 knockout
# (image->query+generated), or the one condition name without either
NAME = re.compile(r"(?<![\w./{])(image->[a-z+]+|[a-z][a-z0-9]*(?:_(?:[a-z]+\{[a-z]\}|[a-z0-9]+))+|register)(?![\w./(])")
EXPLAINS = ("when configured", "no bar when")


def named_conditions(caption: str) -> dict[str, list[str]]:
    """{name: clauses naming it} over the caption's prose (``literals``, file names and config
    keys, left out); clauses end at ";" or at a sentence's "." """
    prose = re.sub(r"``[^`]*``", " ", caption)
    names: dict[str, list[str]] = {}
    for clause in re.split(r"(?<=[;.])\s", prose):
        for name in NAME.findall(clause):
            names.setdefault(name, []).append(clause)
    return names


def unexplained(caption: str, values) -> list[str]:
    """Names the caption gives that match no value and that no clause naming them explains."""
    values = [str(v) for v in values]
    missing = []
    for name, clauses in named_conditions(caption).items():
        pattern = re.compile(re.sub(r"\\\{[a-z]\\\}", r"\\d+", re.escape(name)))
        if not any(pattern.fullmatch(v) for v in values) and not any(e in c for c in clauses for e in EXPLAINS):
            missing.append(name)
    return missing


def test_the_extraction_finds_templated_and_plain_names():
    caption = ("Conditions: object_b{b} = cells; register = outliers (no bar when none); "
               "image->query+generated blocks both; a file ``neo/ablation/ablation.csv`` and "
               "image_topk_after_prompt, when configured, moves it.")
    assert sorted(named_conditions(caption)) == ["image->query+generated", "image_topk_after_prompt",
                                                 "object_b{b}", "register"]
    assert unexplained(caption, ["object_b1"]) == ["image->query+generated"]


@pytest.mark.parametrize("caption", sorted(FIGURE_TABLES))
def test_each_condition_a_caption_names_has_rows_or_an_explanation(tiny_run, caption):
    path, column = FIGURE_TABLES[caption]
    text = (ROOT / "workflow" / "report" / f"{caption}.rst").read_text()
    assert named_conditions(text), f"{caption}.rst names no condition: the extraction is broken"
    table = pd.read_csv(tiny_run / "results" / RUN / path)
    assert not unexplained(text, table[column].dropna().unique()), (
        f"{caption}.rst names conditions with no row in {path} ({column}) and no word on why "
        f"({' or '.join(EXPLAINS)}): {unexplained(text, table[column].dropna().unique())}")
