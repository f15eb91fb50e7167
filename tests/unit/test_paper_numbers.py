"""Issue 22's paper values where a reader meets them: the LLaVA paper configs hold the authors'
choice for each key the authors' code fixes, the tiny and default runs screen their targets, and
every paper number the prose quotes names the model and the source the comparison table gives it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vlminterp.experiments.paper_comparison import paper_comparison

ROOT = Path(__file__).resolve().parents[2]

#: The authors' choices read from their code (clemneo/llava-interp at 7bd565a): 4 bit for N1's
#: generative/polling runs and the noising filter (ablation_experiment.py's HookedLVLM(quantize=True,
#: quantize_type="4bit")), fp16 otherwise; their released mean; the drop of each run's own top-1; the
#: first qualifying annotation in the file's order; the noising filter on.
AUTHORS = {("model", "dtype"): "fp16", ("model", "quantization"): "none",
           ("model", "stages", "screen_neo_targets", "quantization"): "4bit",
           ("model", "stages", "ablate_object_tokens", "quantization"): "4bit",
           ("neo", "ablation", "mean_vector"): "authors", ("neo", "blocking", "drop_of"): "top1",
           ("neo", "selection", "target_order"): "file", ("neo", "screening", "enabled"): True}


def _get(config: dict, path: tuple[str, ...]):
    for key in path:
        config = config[key]
    return config


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-phi-3-mini"])
def test_llava_paper_configs_hold_the_authors_choices(name):
    config = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    assert {path: _get(config, path) for path in AUTHORS} == AUTHORS


@pytest.mark.parametrize("path", ["config.yaml", "tests/configs/tiny.yaml"])
def test_the_default_and_tiny_runs_screen_their_targets(path):
    assert yaml.safe_load((ROOT / path).read_text())["neo"]["screening"]["enabled"] is True


#: How the prose writes each paper number of the comparison table.
QUOTED = {0.70: "70%", 0.40: "0.40", 0.8483: "84.83", 0.8146: "81.46", 0.6103: "61.03"}


def _paragraphs(text: str) -> list[str]:
    """Blank-line paragraphs, a bullet list split into its bullets."""
    return [p for block in re.split(r"\n\s*\n", text) for p in re.split(r"\n(?=\s*- )", block)]


def test_every_paper_number_in_the_prose_names_its_model_and_source():
    """Each paragraph of the README, PROTOCOLS and the report captions that quotes a paper number
    names the model the comparison table attributes it to and its kind of source ("abstract" for
    the one number checked there, "unsourced" for the others); "middle quarter" is said of
    InternVL2-76B's window only."""
    from test_paper_comparison import _ablation, _answers, _knockout, _peaks, _toy_questions, summarized

    table = paper_comparison(summarized(_ablation(), _knockout(), _peaks(), _answers(_toy_questions())), "m", False)
    numbered = table[table["paper_value"].notna() & (table["relation"] != "~")]
    expected = {}
    for value, part in numbered[numbered["paper_value"] != 0].groupby("paper_value"):  # 0.00: quoted with 0.40
        assert part[["paper_model", "source"]].nunique().tolist() == [1, 1], value
        row = part.iloc[0]
        expected[QUOTED[round(float(value), 4)]] = (row["paper_model"],
                                                    "unsourced" if row["source"].startswith("unsourced") else "abstract")
    assert set(expected) == set(QUOTED.values())
    files = [ROOT / "README.md", ROOT / "docs" / "PROTOCOLS.md", *sorted((ROOT / "workflow" / "report").glob("*.rst"))]
    checked = 0
    for path in files:
        for paragraph in _paragraphs(path.read_text(encoding="utf-8")):
            flat = " ".join(paragraph.split())
            for quoted, (model, source) in expected.items():
                if re.search(rf"(?<![\d.]){re.escape(quoted)}(?![\d])", flat):
                    assert model in flat and source in flat, f"{path.name}: {quoted} without {model} / {source}: {flat}"
                    checked += 1
            if "middle quarter" in flat:
                assert "InternVL2-76B" in flat and "20-40 of 80" in flat, f"{path.name}: {flat}"
    assert checked >= 5, "the prose quotes none of the paper numbers: the check checked nothing"
