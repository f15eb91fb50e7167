"""The kaduri: section of the config schema and the K spec dataclasses describe the same keys."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from vlminterp.experiments.kaduri_knockout import LLMJudgeConfig
from vlminterp.specs import build_spec

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
KADURI = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["kaduri"]["properties"]
# Keys and defaults of every kaduri section against its spec: tests/unit/test_config_schema.py.


def test_llm_judge_section_builds_the_judge_spec():
    """kaduri.llm_judge (its own section: changing the judge never reruns the knockouts) builds
    the judge client's spec with the run's cache path."""
    config = {"run": "x", "dataset": {"kind": "shapes"}, "model": {"kind": "organism"}}
    validate(config, str(SCHEMA_PATH), set_default=True)
    judge = build_spec(LLMJudgeConfig, config["kaduri"]["llm_judge"], where="kaduri.llm_judge")
    assert judge.enabled is False
    assert not judge.cache.startswith("/"), "the cache lives under results/<run>/"
    client = judge.client_spec("results/x/" + judge.cache)
    assert client.api_key_env == "OPENAI_API_KEY" and client.cache_path.endswith("llm_judge_cache.jsonl")
    assert client.model == KADURI["llm_judge"]["properties"]["model"]["default"]


def test_defaults_fill_in_and_bad_keys_fail():
    config = {"run": "x", "dataset": {"kind": "shapes"}, "model": {"kind": "organism"}}
    validate(config, str(SCHEMA_PATH), set_default=True)
    assert config["kaduri"]["reprompt"]["top_k_fractions"] == [0.02, 0.05]
    assert config["kaduri"]["llm_judge"]["enabled"] is False
    bad = {"run": "x", "dataset": {"kind": "shapes"}, "model": {"kind": "organism"},
           "kaduri": {"knockout": {"window_stp": 2}}}
    with pytest.raises(Exception, match="window_stp"):
        validate(bad, str(SCHEMA_PATH), set_default=True)
