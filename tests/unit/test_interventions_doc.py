"""The worked examples of docs/INTERVENTIONS.md run as written and show what they claim."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "INTERVENTIONS.md"


def _examples() -> dict[str, str]:
    text = DOC.read_text()
    out = {}
    for title, body in re.findall(r"^### (.+?)\n(.*?)(?=^### |^## |\Z)", text, flags=re.S | re.M):
        blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
        if blocks:
            out[title.strip()] = blocks[0]
    return out


EXAMPLES = _examples()


def _run(title: str) -> dict:
    scope: dict = {}
    with torch.no_grad():
        exec(compile(EXAMPLES[title], f"{DOC.name}: {title}", "exec"), scope)
    return scope


def test_the_doc_has_three_examples():
    assert list(EXAMPLES) == ["Patch an object's tokens from image A into image B and read the answer",
                              "Steer the residual stream", "Ablate one attention head"]


def test_patch_example():
    scope = _run("Patch an object's tokens from image A into image B and read the answer")
    assert isinstance(scope["clean"], str) and isinstance(scope["patched"], str)
    vlm, b, patch = scope["vlm"], scope["b"], scope["patch"]
    logits = vlm.logits(b, [None, patch])
    assert (logits[1] - logits[0]).abs().max() > 1e-4  # the patch changes B (the oracle check: test_edits.py)


def test_steer_example():
    rising = _run("Steer the residual stream")["rising"]
    assert bool((rising.diff() > 0).all())


def test_head_ablation_example():
    effect = _run("Ablate one attention head")["effect"]
    assert effect.shape == (4, 4) and bool((effect > 0).any())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-internvl"])
def test_open_model_lists_sites(name):
    from vlminterp.api import open_model

    vlm = open_model(name)
    sites = vlm.sites()
    assert "resid_post.3" in sites and "head_out.0" in sites and "embed" in sites
    assert all(vlm.adapter.site(s).name == s for s in sites)
