"""Every shipped run config, run from the root of a checkout (config.yaml beside it, as users run it):
it lists its whole DAG on a machine without weights or a GPU, and it means exactly what it says
plus the schema's defaults, never the default run's config.yaml."""
from __future__ import annotations

import re

import pytest
import yaml

from rehearsal import ROOT, snakemake_in

pytestmark = pytest.mark.workflow

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
MISSING = object()


_snakemake = snakemake_in  # from the checkout copy's root (fixtures `checkout`, `local_model`: conftest.py)


def leaves(tree: dict, prefix: tuple = ()):
    """(key path, value) of every leaf of a nested config."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def lookup(tree, path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return MISSING
        tree = tree[key]
    return tree


def schema_default(path):
    node = SCHEMA
    for key in path:
        node = node.get("properties", {}).get(key)
        if node is None:
            return MISSING
    return node.get("default", MISSING)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_paper_dag_dry_run(checkout, config):
    proc = _snakemake(checkout, "-n", "--cores", "all", "--configfile", f"configs/{config.name}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = set(re.findall(r"^rule (\w+):", proc.stdout, flags=re.M))
    if yaml.safe_load(config.read_text())["model"]["kind"] == "organism":  # a planted organism's run
        assert {"generate_world", "train_organism", "validate_methods"} <= planned
        assert "download_coco_annotations" not in planned
    else:
        assert "download_coco_annotations" in planned
        assert "train_organism" not in planned  # a published model is loaded, not trained
        assert "generate_world" not in planned  # the default run's shapes world does not leak in
    assert not (checkout / "results").exists()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_means_what_it_says(checkout, local_model, tmp_path, config):
    """The effective config (results/<run>/config/effective_config.yaml) holds every value of the file, and
    every key of config.yaml that the file leaves unset has the schema's default."""
    given = yaml.safe_load(config.read_text())
    overlay = {"device": "cpu", "model": {"pretrained": {"id": str(local_model)}}}  # no GPU, no hub
    # 4 bit needs CUDA (the config check refuses it on a CPU): the stages the file quantizes load unquantized
    stages = {rule: {"quantization": "none"} for rule, stage in given["model"].get("stages", {}).items()
              if stage.get("quantization", "none") != "none"}
    if stages:
        overlay["model"]["stages"] = stages
    if given["model"].get("quantization", "none") != "none":
        overlay["model"]["quantization"] = "none"
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    target = f"results/{given['run']}/config/effective_config.yaml"
    proc = _snakemake(checkout, "--cores", "1", "--configfile", f"configs/{config.name}",
                      str(tmp_path / "overlay.yaml"), "--", target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    effective = yaml.safe_load((checkout / target).read_text())
    assert effective["config_files"] == [f"configs/{config.name}", str(tmp_path / "overlay.yaml")]
    for path, value in leaves(given):
        if lookup(overlay, path) is MISSING:
            assert lookup(effective, path) == value, ".".join(path)
    default_run = yaml.safe_load((ROOT / "config.yaml").read_text())
    checked = 0
    for path, _ in leaves(default_run):
        default = schema_default(path)
        if lookup(given, path) is MISSING and lookup(overlay, path) is MISSING and default is not MISSING:
            assert lookup(effective, path) == default, f"{'.'.join(path)} leaked from config.yaml"
            checked += 1
    # a planted organism's config repeats config.yaml whole, so it leaves nothing to the schema
    # (test_routing.py::test_a_planted_config_is_the_default_run_with_one_constraint)
    assert checked or config.stem.startswith("organism-"), \
        "config.yaml sets nothing the file leaves to the schema: the check checked nothing"
