"""The repository's prose points only at things that exist: no file outside the repository, and
the authors' scripts at their real paths."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Files of clemneo/llava-interp at 7bd565a (git ls-tree of that commit), the N1-N3 code PROTOCOLS cites.
AUTHORS_TREE = {
    "scripts/ablation_experiment.py", "scripts/ablation_experiment_curate.py", "scripts/ablation_experiment_phi.py",
    "scripts/ablation_experiment_curate_phi.py", "scripts/attention_experiment_curate.py",
    "scripts/calculate_mean_vector.py", "scripts/estimate_acts_size.py", "scripts/save_post_adapter_acts.py",
    "scripts/logit_lens/", "scripts/logit_lens/create_logit_lens.py", "scripts/logit_lens/generate_overview.py",
    "src/HookedLVLM.py", "src/ImageDatasets.py", "src/InputsEmbeds.py", "src/config.yaml", "src/lvlm_lens.py",
    "src/utils.py", "data/clean_questions.json", "data/test_acts_full_precision_mean_vector.pt",
    "data/val_acts_full_precision_phi_mean_vector.pt",
}


def _prose_files():
    for folder in ("src", "workflow", "docs", "configs", "tests"):
        yield from (p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".smk", ".yaml", ".rst"))
    yield ROOT / "README.md"


def test_no_reference_to_design_notes_outside_the_repository():
    this = Path(__file__).resolve()
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in _prose_files() if p.resolve() != this
            for m in re.finditer(r"DESIGN\.md|design habit", p.read_text(encoding="utf-8"), flags=re.I)]
    assert not hits, hits


def test_protocols_cite_the_authors_scripts_at_their_paths():
    text = (ROOT / "docs" / "PROTOCOLS.md").read_text(encoding="utf-8")
    neo = text[text.index("## Neo et al."):]
    neo = neo[:neo.index("\n## ", 5)]
    cited = set(re.findall(r"`((?:src/|scripts/|data/)[\w/.-]*)`", neo))
    assert {"scripts/ablation_experiment_curate.py", "scripts/attention_experiment_curate.py"} <= cited
    assert cited <= AUTHORS_TREE, cited - AUTHORS_TREE


def test_name_in_topk_is_not_called_the_papers_measure():
    """Neo et al. report no logit-lens rate: name_in_topk is this repository's measure (issue 22, 8)."""
    this = Path(__file__).resolve()
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in _prose_files() if p.resolve() != this
            for m in re.finditer(r"name_in_topk[^.;]*the paper'?s'? measure", " ".join(p.read_text(encoding="utf-8")
                                                                                    .split()))]
    assert not hits, hits
