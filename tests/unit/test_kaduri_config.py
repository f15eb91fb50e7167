"""The kaduri: section of the config schema and the K spec dataclasses describe the same keys."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from vlminterp.experiments.kaduri_attention import AttentionFractionSpec
from vlminterp.experiments.kaduri_knockout import KnockoutSpec
from vlminterp.experiments.kaduri_localization import LocalizationSpec
from vlminterp.experiments.kaduri_reprompt import RepromptSpec
from vlminterp.scoring.llm_judge import LLMJudgeSpec

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
KADURI = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["kaduri"]["properties"]

# (schema section, spec dataclass, spec fields the workflow fills, schema keys that are not spec fields)
SECTIONS = [
    ("attention", AttentionFractionSpec, {"max_new_tokens"}, set()),
    ("knockout", KnockoutSpec, {"max_new_tokens"}, {"llm_judge"}),
    ("localization", LocalizationSpec, {"max_new_tokens"}, {"band_width"}),
    ("reprompt", RepromptSpec, {"max_new_tokens"}, set()),
]


def _as_yaml(value):
    """A spec default as YAML reads it back (tuples, nested too, are lists)."""
    return [_as_yaml(v) for v in value] if isinstance(value, (tuple, list)) else value


@pytest.mark.parametrize("name, spec_cls, filled, extra", SECTIONS, ids=[s[0] for s in SECTIONS])
def test_section_matches_spec(name, spec_cls, filled, extra):
    section = KADURI[name]["properties"]
    fields = {f.name for f in dataclasses.fields(spec_cls)} - filled
    assert set(section) - extra == fields
    default = spec_cls()
    for key in fields:
        expected = _as_yaml(getattr(default, key))
        assert section[key]["default"] == expected, f"default of kaduri.{name}.{key}"
    assert KADURI["max_new_tokens"]["default"] == default.max_new_tokens


def test_llm_judge_section_builds_the_judge_spec():
    section = KADURI["knockout"]["properties"]["llm_judge"]["properties"]
    keys = set(section) - {"enabled", "cache"}
    assert keys <= {f.name for f in dataclasses.fields(LLMJudgeSpec)}
    defaults = {k: section[k]["default"] for k in keys}
    spec = LLMJudgeSpec(**defaults)
    assert spec.api_key_env == "OPENAI_API_KEY" and section["enabled"]["default"] is False
    assert not section["cache"]["default"].startswith("/"), "the cache lives under results/<run>/"


def test_defaults_fill_in_and_bad_keys_fail():
    config = {"run": "x", "dataset": {"kind": "shapes"}, "model": {"kind": "organism"}}
    validate(config, str(SCHEMA_PATH), set_default=True)
    assert config["kaduri"]["reprompt"]["top_k_fractions"] == [0.02, 0.05]
    assert config["kaduri"]["knockout"]["llm_judge"]["enabled"] is False
    bad = {"run": "x", "dataset": {"kind": "shapes"}, "model": {"kind": "organism"},
           "kaduri": {"knockout": {"window_stp": 2}}}
    with pytest.raises(Exception, match="window_stp"):
        validate(bad, str(SCHEMA_PATH), set_default=True)


# ---- every config states each paper's image geometry (issue #13, point 7) --------------------------
CONFIGS = sorted([ROOT / "config.yaml", *(ROOT / "configs").glob("*.yaml")])
#: Family of each config's model -> the geometries that family has (adapters' `geometries`).
FAMILY_GEOMETRIES = {"llava": {"crop", "pad"}, "internvl": {"resize"}, "qwen2_vl": {"resize"}}


def _family(config: dict) -> str:
    if config["model"]["kind"] == "organism":
        return "llava"
    model_id = config["model"]["pretrained"]["id"].lower()
    return next(family for key, family in (("llava", "llava"), ("internvl", "internvl"), ("qwen2", "qwen2_vl"))
                if key in model_id)


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
