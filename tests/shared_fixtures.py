"""Real data for tests, read from ../shared/fixtures beside the clone (see its SOURCES.md).

None of it is committed here. A test that needs a file calls `require(path)`, which skips with a
reason naming the path where ../shared is absent (a user's clone); on CI and developer machines
it is present. VLMINTERP_SHARED_FIXTURES points elsewhere.

    from shared_fixtures import COCO_MINI, LLAMA2_TOKENIZER, require
    root = require(COCO_MINI)
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("VLMINTERP_SHARED_FIXTURES", ROOT.parent / "shared" / "fixtures"))

COCO_MINI = FIXTURES / "coco-mini"                                   # official COCO 2017 layout
LLAMA2_TOKENIZER = FIXTURES / "llama2-tokenizer" / "tokenizer.model"  # LLaVA-1.5's base tokenizer
LLAVA_INTERP = FIXTURES / "llava-interp"                             # Neo et al.'s data/ files
CHAIR_SYNONYMS = FIXTURES / "chair" / "synonyms.txt"                 # CHAIR's synonym list
GEMMA3_PROCESSOR = FIXTURES / "processors" / "google--gemma-3-4b-it"   # real Gemma 3 processor + config
QWEN2_5_VL_PROCESSOR = FIXTURES / "processors" / "Qwen--Qwen2.5-VL-7B-Instruct"   # real processor + config
QWEN3_VL_PROCESSOR = FIXTURES / "processors" / "Qwen--Qwen3-VL-8B-Instruct"      # real processor + config
SMOLVLM_PROCESSOR = FIXTURES / "processors" / "HuggingFaceTB--SmolVLM-256M-Instruct"  # Idefics3 processor + config


def require(path: Path) -> Path:
    """`path`, or skip the calling test with a reason when the shared fixtures are not beside the clone."""
    if not path.exists():
        pytest.skip(f"real test data {path} absent (../shared/fixtures is not beside this clone)")
    return path
