"""Neo et al.'s released files through the real Snakemake CLI: the paper configs plan their download,
conversion and mean comparison (the default run plans none); the paper config downloads the real
questions file from a local mirror, converts it and selects targets with it; bad combinations of
the keys fail before any job runs, naming the key."""
from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import yaml
from coco_mirror import MirrorServer, build_mirror_from_coco
from rehearsal import snakemake_in
from shared_fixtures import COCO_MINI, LLAVA_INTERP, require

from vlminterp.data.authors_data import questions_table
from vlminterp.data.coco import CocoDataset, SelectionSpec, select_targets

pytestmark = pytest.mark.workflow

AUTHORS_RULES = {"download_authors_file", "convert_authors_questions", "compare_mean_vectors"}


_snakemake = snakemake_in  # from the checkout copy's root (fixtures `checkout`, `local_model`: conftest.py)


def _planned(checkout, *configs):
    proc = _snakemake(checkout, "-n", "--cores", "1", "--configfile", *configs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return re.findall(r"^rule (\w+):", proc.stdout, flags=re.M), proc.stdout


@pytest.mark.parametrize("config, vector", [("llava-1.5-7b", "test_acts_full_precision_mean_vector.pt"),
                                            ("llava-phi-3-mini", "val_acts_full_precision_phi_mean_vector.pt")])
def test_paper_configs_plan_the_authors_files(checkout, config, vector):
    rules, text = _planned(checkout, f"configs/{config}.yaml")
    assert rules.count("download_authors_file") == 2 and AUTHORS_RULES <= set(rules)
    assert f"neo/authors/{vector}" in text and f"results/{config}/neo/mean_comparison.json" in text


@pytest.mark.parametrize("config", ["llava-1.5-7b", "llava-phi-3-mini"])
def test_paper_configs_ablate_with_the_authors_mean(checkout, config):
    """The paper configs hold the authors' choice: N1 ablates (and its IG baseline starts from) their
    released mean, so the ablation job reads the converted authors' vector, not this run's mean."""
    _, text = _planned(checkout, f"configs/{config}.yaml", "--", f"results/{config}/neo/ablation/ablation.csv")
    jobs = text.split("\nrule ")
    ablation = next(job for job in jobs if job.startswith("ablate_object_tokens:"))
    assert f"results/{config}/neo/authors_mean_embedding.safetensors" in ablation
    assert "neo/mean_embedding.safetensors" not in ablation


def test_the_default_run_screens_its_targets(checkout):
    """The noising filter is on in the default run, as in the paper configs."""
    rules, _ = _planned(checkout, "config.yaml")
    assert "screen_neo_targets" in rules


def test_the_default_run_downloads_nothing_of_theirs(checkout):
    rules, _ = _planned(checkout, "config.yaml")
    assert not AUTHORS_RULES & set(rules)


@pytest.mark.parametrize("overlay, message", [
    ({"neo": {"prompts": {"vqa_questions_file": "mine.csv"}}}, "vqa_questions_file to null"),
    ({"neo": {"authors_data": {"mean_vector": None}, "ablation": {"mean_vector": "authors"}}},
     "needs neo.authors_data.mean_vector"),
    ({"neo": {"authors_data": {"questions": False}}}, "include_question_images needs a questions file"),
])
def test_bad_combinations_fail_naming_the_key(checkout, tmp_path, overlay, message):
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    proc = _snakemake(checkout, "-n", "--cores", "1", "--configfile", "configs/llava-1.5-7b.yaml", str(path))
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr


def test_paper_config_downloads_converts_and_selects_with_their_questions(checkout, local_model, tmp_path):
    require(LLAVA_INTERP), require(COCO_MINI)
    mirror = build_mirror_from_coco(tmp_path / "mirror", COCO_MINI)
    (mirror.root / "data").mkdir()
    shutil.copyfile(LLAVA_INTERP / "clean_questions.json", mirror.root / "data" / "clean_questions.json")
    with MirrorServer(mirror.root) as server:
        # no GPU: the paper config's 4-bit stages load unquantized (4 bit is CUDA only)
        unquantized = {stage: {"quantization": "none"} for stage in ("screen_neo_targets", "ablate_object_tokens")}
        overlay = {"device": "cpu", "model": {"pretrained": {"id": str(local_model)}, "stages": unquantized},
                   "dataset": {"coco": {"annotations_base_url": server.url, "images_base_url": server.url,
                                        "annotations_size": mirror.archive_size,
                                        "annotations_md5": mirror.archive_md5}},
                   "neo": {"authors_data": {"base_url": server.url}}}
        (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
        run = "results/llava-1.5-7b"
        proc = _snakemake(checkout, "--cores", "1", "--configfile", "configs/llava-1.5-7b.yaml",
                          str(tmp_path / "overlay.yaml"), "--", f"{run}/neo/candidates.csv")
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert [r["path"] for r in server.requests if r["path"].startswith("/data/")] == ["/data/clean_questions.json"]
    converted = pd.read_csv(checkout / run / "neo" / "authors_questions.csv")
    pd.testing.assert_frame_equal(converted, questions_table(LLAVA_INTERP / "clean_questions.json"))
    assert len(converted) == 100
    # coco-mini holds none of their 100 images: the selection is the paper rule's alone, and says so
    dataset = CocoDataset.load(checkout / "data" / "coco", "train2017")
    assert not set(converted["image_id"]) & set(dataset.image_ids())
    # the noising filter's candidates (neo.screening: every qualifying image, before the model's test)
    selection = pd.read_csv(checkout / run / "neo" / "candidates.csv")
    expected = select_targets(dataset, SelectionSpec(max_images=None, target_order="file"))  # the authors' rule
    assert selection["image_id"].tolist() == expected["image_id"].tolist()
    assert selection["annotation_id"].tolist() == expected["annotation_id"].tolist()
    log = (checkout / run / "logs" / "select_neo_targets.log").read_text()
    assert "100 of the 100 required images have no qualifying target" in log
