"""The paper runs rehearsed (tests/rehearsal.py): `configs/llava-1.5-7b.yaml` and `configs/smolvlm-256m.yaml`
from the root of a checkout, by the real Snakemake CLI, on real COCO 2017 files and the family's real
tokenizer and processor; every stage N1-K4 runs. LLaVA-1.5's tables are checked against computations
written here from the raw files (pycocotools on the annotation JSON, integer pixel arithmetic on the
decoded masks), not with the library's code; SmolVLM's image-token counts against its real processor."""
from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pycocotools.coco import COCO

from rehearsal import LLAVA_1_5, SMOLVLM, SNAKEMAKE, rehearse
from shared_fixtures import COCO_MINI, require

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

GRID, PATCH, SIDE = 24, 14, 336


def _rehearsed(family, tmp_path_factory):
    for path in family.fixtures:
        require(path)
    run = rehearse(tmp_path_factory.mktemp(family.run), family)
    print(f"{family.config}: {run.seconds:.0f} s wall, {run.cpu_seconds:.0f} CPU-s")
    assert run.proc.returncode == 0, f"{run.proc.stdout[-3000:]}\n{run.proc.stderr[-6000:]}"
    return run


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """LLaVA-1.5's rehearsal."""
    return _rehearsed(LLAVA_1_5, tmp_path_factory)


@pytest.fixture(scope="module")
def smolvlm_rehearsal(tmp_path_factory):
    return _rehearsed(SMOLVLM, tmp_path_factory)


@pytest.fixture(params=["llava-1.5", "smolvlm"])
def any_rehearsal(request):
    """Each family's rehearsal, for what every family must show."""
    return request.getfixturevalue({"llava-1.5": "rehearsal", "smolvlm": "smolvlm_rehearsal"}[request.param])


@pytest.fixture(scope="module")
def coco_train() -> COCO:
    return COCO(str(require(COCO_MINI) / "annotations" / "instances_train2017.json"))


def _table(run, path) -> pd.DataFrame:
    return pd.read_csv(run.run_dir / path, keep_default_na=False, na_values=[""])


def _effective(run) -> dict:
    return yaml.safe_load((run.run_dir / "config" / "effective_config.yaml").read_text())


# one rule of each stage N1-N3, K1-K4 (and the object-patching stage): each must have run
STAGE_RULES = {"ablate_object_tokens", "apply_logit_lens", "block_object_attention", "patch_object_tokens",
               "measure_attention_fractions", "run_group_knockouts", "localize_objects",
               "answer_reprompt_questions", "compare_with_papers"}


def test_every_output_exists_and_nothing_is_left_to_do(any_rehearsal):
    """Every file of Snakemake's own summary of the run is on disk, up to date and planned for no
    update (one Snakemake call: it is what `-n` would say), every stage's among them."""
    run = any_rehearsal
    proc = subprocess.run([str(SNAKEMAKE), "--summary", "--configfile", run.family.config, str(run.overlay)],
                          cwd=run.root, capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in proc.stdout.splitlines() if "\t" in line]
    header, rows = rows[0], rows[1:]
    name, rule, status, plan = (header.index(column) for column in ("output_file", "rule", "status", "plan"))
    assert STAGE_RULES <= {row[rule] for row in rows}
    assert [row[name] for row in rows if row[status] != "ok" or row[plan] != "no update"
            or not (run.root / row[name]).exists()] == []


def test_every_model_rule_loaded_the_checkpoint_behind_the_familys_adapter(any_rehearsal):
    run = any_rehearsal
    loaded = {}
    for log in (run.run_dir / "logs").glob("*.log"):
        for path, adapter in re.findall(r"loaded model (\S+) \(.*?\) in [0-9.]+ s, behind (\w+)", log.read_text()):
            loaded[log.stem] = (path, adapter)
    assert loaded, "no rule log says it loaded a model"
    assert set(loaded.values()) == {(str(run.checkpoint), run.family.adapter)}, loaded


def test_the_effective_config_is_the_papers(rehearsal):
    """Run from a root with config.yaml beside it: the paper's area rule, not the default run's
    (every config: tests/workflow/test_paper_configs.py)."""
    effective = _effective(rehearsal)
    assert effective["config_files"][0] == LLAVA_1_5.config
    assert effective["neo"]["selection"]["target_area_range"] == [1000.0, 2000.0]
    assert effective["neo"]["selection"]["exclude_crowd_targets"] is True
    assert effective["neo"]["logit_lens"]["html_images"] == 20


def test_targets_follow_the_papers_rule(rehearsal, coco_train):
    """<= 3 annotations (crowd included); a category with exactly one instance; that instance not a
    crowd and of area in (1000, 2000) px^2."""
    expected = set()
    for image_id in coco_train.getImgIds():
        annotations = coco_train.loadAnns(coco_train.getAnnIds(imgIds=image_id, iscrowd=None))
        if len(annotations) > 3:
            continue
        per_category = Counter(a["category_id"] for a in annotations)
        for a in annotations:
            if per_category[a["category_id"]] == 1 and not a["iscrowd"] and 1000 < a["area"] < 2000:
                expected.add((image_id, a["id"]))
    selection = _table(rehearsal, "neo/selection.csv")
    assert expected and set(zip(selection["image_id"], selection["annotation_id"])) == expected


def _crop_cell_sets(mask: np.ndarray) -> set[tuple[int, int]]:
    """Cells (row, col) of the 24 x 24 grid holding at least one pixel of `mask` under the HF
    LLaVA-1.5 processor: short side resized to 336 (long side int(336 * long / short)), centre crop
    336 (offset (size - 336) // 2), 14 px patches. Pixel x covers [x, x + 1) and lands on
    [x * W' / W, (x + 1) * W' / W) in the resized image: exact in integers, scaled by W (or H)."""
    height, width = mask.shape
    short, long = min(width, height), max(width, height)
    resized_long = int(SIDE * long / short)
    new_w, new_h = (SIDE, resized_long) if width <= height else (resized_long, SIDE)
    left, top = (new_w - SIDE) // 2, (new_h - SIDE) // 2

    def cells_of(index: int, size: int, new_size: int, offset: int) -> range:
        lo = index * new_size - offset * size          # pixel interval, in units of 1 / size
        hi = (index + 1) * new_size - offset * size
        first = max(lo // (PATCH * size), 0)
        last = min(-(-hi // (PATCH * size)) - 1, GRID - 1)   # ceil(hi / cell) - 1
        return range(first, last + 1) if hi > 0 and lo < SIDE * size else range(0)

    cells = set()
    ys, xs = np.nonzero(mask)
    for y, x in set(zip(ys.tolist(), xs.tolist())):
        for row in cells_of(y, height, new_h, top):
            for col in cells_of(x, width, new_w, left):
                cells.add((row, col))
    return cells


def test_object_cells_are_the_masks_pixels_under_the_crop(rehearsal, coco_train):
    cells = _table(rehearsal, "neo/cells.csv")
    effective = _effective(rehearsal)
    assert effective["neo"]["cells"]["geometry"] == "crop" and effective["neo"]["cells"]["min_overlap"] == 0
    for annotation_id, part in cells.groupby("annotation_id"):
        mask = coco_train.annToMask(coco_train.anns[int(annotation_id)])
        got = {(int(r), int(c)) for r, c in part.loc[part["object_b0"].astype(bool), ["cell_row", "cell_col"]].values}
        assert got == _crop_cell_sets(mask), f"annotation {annotation_id}"


def test_only_the_selected_images_were_downloaded(any_rehearsal):
    rehearsal = any_rehearsal
    manifest = pd.read_csv(rehearsal.coco_dir / "images" / "train2017.manifest.csv")
    wanted = set()
    for table in ("neo/selection.csv", "neo/mean_images.csv", "kaduri/images.csv"):
        wanted |= set(_table(rehearsal, table)["image_id"])
    assert set(manifest["image_id"]) == wanted
    on_disk = {int(p.stem) for p in (rehearsal.coco_dir / "images" / "train2017").glob("*.jpg")}
    assert on_disk == wanted


def test_every_stage_wrote_rows_for_its_images(any_rehearsal):
    rehearsal = any_rehearsal
    targets = set(_table(rehearsal, "neo/selection.csv")["image_id"])
    kaduri = set(_table(rehearsal, "kaduri/images.csv")["image_id"])
    assert targets and len(kaduri) == _effective(rehearsal)["kaduri"]["n_images"]
    assert set(_table(rehearsal, "neo/ablation/ablation.csv")["image_id"]) == targets
    assert set(_table(rehearsal, "neo/blocking/blocking.csv")["image_id"]) == targets
    cells = _table(rehearsal, "neo/cells.csv")
    visible = targets - set(cells.loc[cells["excluded"].fillna("") != "", "image_id"])  # N2 skips the others
    assert set(_table(rehearsal, "neo/logit_lens/scores.csv")["image_id"]) == visible
    assert set(_table(rehearsal, "kaduri/knockout/descriptions.csv")["image_id"]) == kaduri
    assert set(_table(rehearsal, "kaduri/reprompt/answers.csv")["image_id"]) == kaduri
    assert len(_table(rehearsal, "kaduri/attention/summary.csv"))
    lens_pages = list((rehearsal.run_dir / "neo/logit_lens/pages").glob("image_*.html"))
    assert len(lens_pages) == len(visible)


def test_the_ablation_ran_on_llava_sized_inputs(rehearsal):
    """576 image tokens per prompt: the 'all image tokens' condition ablates all of them."""
    ablation = _table(rehearsal, "neo/ablation/ablation.csv")
    everything = ablation[ablation["condition"] == "all_image"]
    assert len(everything) and set(everything["n_tokens"]) == {GRID * GRID}


def test_smolvlm_ablated_every_image_token_the_real_processor_makes(smolvlm_rehearsal):
    """The 'all image tokens' condition ablates exactly the `<image>` tokens SmolVLM's real processor
    (resize target capped to 1024: tiles plus the global image, 64 tokens each) puts in each prompt."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(smolvlm_rehearsal.checkpoint))
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    ablation = _table(smolvlm_rehearsal, "neo/ablation/ablation.csv")
    everything = ablation[ablation["condition"] == "all_image"]
    assert len(everything)
    for image_id, n_tokens in everything.groupby("image_id")["n_tokens"].unique().items():
        with Image.open(smolvlm_rehearsal.coco_dir / "images" / "train2017" / f"{int(image_id):012d}.jpg") as image:
            ids = processor(text="<image>", images=[[image.convert("RGB")]], return_tensors="pt")["input_ids"]
        expected = int((ids == image_token).sum())
        assert expected > 64 and list(n_tokens) == [expected], image_id   # tiled, not the global image alone
