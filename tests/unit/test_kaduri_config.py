"""The kaduri: section of the config schema and the K spec dataclasses describe the same keys."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from vlminterp.experiments.kaduri.knockout import LLMJudgeConfig
from vlminterp.models.adapters import ADAPTERS
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


# ---- every config states each paper's image geometry (issue #13, point 7) --------------------------
CONFIGS = sorted([ROOT / "config.yaml", *(ROOT / "configs").glob("*.yaml")])
#: Family of each config's model -> the geometries that family has (adapters' `geometries`).
FAMILY_GEOMETRIES = {adapter.family: set(adapter.geometries) for adapter in ADAPTERS}
#: A substring of the model id -> its family.
ID_FAMILIES = (("llava-onevision", "llava_onevision"), ("llava", "llava"), ("internvl", "internvl"),
               ("qwen2.5-vl", "qwen2_5_vl"), ("qwen3-vl", "qwen3_vl"), ("qwen2", "qwen2_vl"), ("gemma-3", "gemma3"),
               ("smolvlm", "idefics3"), ("idefics3", "idefics3"))


def _family(config: dict) -> str:
    if config["model"]["kind"] == "organism":
        return "llava"
    model_id = config["model"]["pretrained"]["id"].lower()
    return next(family for key, family in ID_FAMILIES if key in model_id)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_states_the_geometry_of_each_paper(path):
    config = yaml.safe_load(path.read_text())
    neo = config.get("neo", {}).get("cells", {}).get("geometry")
    kaduri = config.get("kaduri", {}).get("geometry")
    assert neo is not None, f"{path.name}: neo.cells.geometry is not stated"
    assert kaduri is not None, f"{path.name}: kaduri.geometry is not stated"
    allowed = FAMILY_GEOMETRIES[_family(config)]
    assert {neo, kaduri} <= allowed, f"{path.name}: {neo}/{kaduri} not geometries of the family ({allowed})"


@pytest.mark.parametrize("name", ["llava-1.5-7b.yaml", "llava-phi-3-mini.yaml"])
def test_llava_paper_configs_crop_for_neo_and_pad_for_kaduri(name):
    config = yaml.safe_load((ROOT / "configs" / name).read_text())
    assert config["neo"]["cells"]["geometry"] == "crop"    # Neo et al.: the HF processor
    assert config["kaduri"]["geometry"] == "pad"           # Kaduri et al.: LLaVA's process_images
