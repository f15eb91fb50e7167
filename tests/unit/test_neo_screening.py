"""Neo et al.'s noising filter (N1): the noised pixels, the walk that stops at N kept targets, the
authors' file order, and the stage on a tiny random model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vlminterp.data.coco import CocoDataset, SelectionSpec, select_targets
from vlminterp.data.shapes import ShapesWorldSpec, generate_world
from vlminterp.experiments.neo.ablation import AblationSpec, run_token_ablation
from vlminterp.experiments.neo.prompts import PromptSpec
from vlminterp.experiments.shared.session import Session
from vlminterp.experiments.shared.cells import CellSpec, cells_by_image, map_object_cells
from vlminterp.experiments.neo.screening import (ScreeningSpec, candidate_spec, choose_screened, noise_object,
                                                 noise_region_mask, screen_targets, walk_order)
from vlminterp.scoring.vocabulary import load_vocabulary


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("screen_world")
    generate_world(ShapesWorldSpec(image_size=24, cell_size=6, n_train=2, n_val=5, margin=1, rle_fraction=0.5,
                                   shapes=("circle", "square", "triangle"), colors=("red", "green", "blue")), root)
    return root


def test_noise_covers_exactly_the_object_tokens_boxes(synthetic):
    """tiny-llama: 24 px crops, 6 px tokens (4x4). A 36 x 24 image is centre-cropped to x in [6, 30):
    token (row r, col c) covers x in [6 + 6c, 12 + 6c), y in [6r, 6r + 6). Mask pixels at (y 7, x 19)
    and (y 20, x 8): tokens (1, 2) and (3, 0) -> the region is those two 6 x 6 squares, by hand."""
    _, _, adapter = synthetic("tiny-llama")
    mask = np.zeros((24, 36), dtype=bool)
    mask[7, 19] = mask[20, 8] = True
    cells = adapter.image_cells((36, 24), "crop")
    expected = np.zeros_like(mask)
    expected[6:12, 18:24] = True
    expected[18:24, 6:12] = True
    region = noise_region_mask(mask, cells, ScreeningSpec(noise_region="cells"), CellSpec())
    np.testing.assert_array_equal(region, expected)
    np.testing.assert_array_equal(noise_region_mask(mask, cells, ScreeningSpec(noise_region="mask"), CellSpec()), mask)

    image = Image.fromarray(np.full((24, 36, 3), 77, dtype=np.uint8))
    noised = np.array(noise_object(image, region, np.random.default_rng(0)))
    assert (noised[~region] == 77).all()
    assert (noised[region] != 77).mean() > 0.9 and len(np.unique(noised[region])) > 50
    again = np.array(noise_object(image, region, np.random.default_rng(0)))
    np.testing.assert_array_equal(noised, again)        # seeded: same bytes


def _candidates(ids):
    return pd.DataFrame({"image_id": ids, "annotation_id": [10 * i for i in ids],
                         "category_name": ["circle"] * len(ids)})


def test_the_walk_stops_at_n_kept_targets_and_records_every_candidate():
    """Outcomes by image id; walk order 5, 3, 9, 1, 7, 2; image 9 exempt. With N = 3: 9 is kept
    untested, 5 fails, 3 passes, 1 passes -> 3 kept; 7 and 2 are not tested."""
    outcomes = {5: "failed_unablated", 3: "passed", 1: "passed", 7: "passed", 2: "failed_noised"}
    tested = []

    def test(row):
        tested.append(int(row.image_id))
        return {"status": outcomes[int(row.image_id)]}

    ordered = _candidates([5, 3, 9, 1, 7, 2])
    kept, screening = choose_screened(ordered, test, max_images=3, until_included=True, exempt=[9])
    assert tested == [5, 3, 1]
    assert kept["image_id"].tolist() == [1, 3, 9] and kept["screen"].tolist() == ["passed", "passed", "exempt"]
    assert screening["image_id"].tolist() == [5, 3, 9, 1, 7, 2]
    assert screening["status"].tolist() == ["failed_unablated", "passed", "exempt", "passed", "not_tested",
                                            "not_tested"]
    # the other mode: every sampled candidate is tested, those that pass are kept
    tested.clear()
    kept, _ = choose_screened(ordered, test, max_images=3, until_included=False, exempt=[9])
    assert tested == [5, 3, 1, 7, 2] and kept["image_id"].tolist() == [1, 3, 7, 9]


def test_the_walk_follows_the_annotation_files_order(tmp_path):
    """"file": the order of the JSON's images list (read here with json), not the ids' order."""
    from cocofixtures import CocoBuilder

    builder = CocoBuilder()
    cat = builder.category("cat")
    for image_id in (30, 10, 20):
        builder.image(24, 24, image_id)
        builder.box(image_id, cat, 2, 2, 8, 8)
    builder.write(tmp_path, split="val")
    dataset = CocoDataset.load(tmp_path, "val")
    raw = json.loads(Path(dataset.annotation_file).read_text())
    file_order = [image["id"] for image in raw["images"]]
    candidates = _candidates([10, 20, 30])
    assert walk_order(candidates, dataset, ScreeningSpec())["image_id"].tolist() == file_order == [30, 10, 20]
    seeded = walk_order(candidates, dataset, ScreeningSpec(order="seeded", seed=3))["image_id"].tolist()
    assert sorted(seeded) == [10, 20, 30]


def test_candidates_are_every_qualifying_image_when_walking_until_n():
    spec = SelectionSpec(max_images=7)
    assert candidate_spec(spec, ScreeningSpec(enabled=True, until_included=True, max_candidates=50)).max_images == 50
    assert candidate_spec(spec, ScreeningSpec(enabled=True)).max_images == 7
    assert candidate_spec(spec, ScreeningSpec(enabled=False, until_included=True)).max_images == 7


def test_screening_stage_on_a_tiny_model_and_exempt_images_run_vqa_only(world, synthetic):
    model, processor, adapter = synthetic("tiny-llama")
    dataset = CocoDataset.load(world, "val")
    candidates = select_targets(dataset, SelectionSpec(split="val", target_area_range=(0, 1e9),
                                                       exclude_crowd_targets=False, max_images=None))
    vocabulary = load_vocabulary("shapes", categories=list(dataset.category_names().values()))
    exempt = int(candidates["image_id"].iloc[0])
    spec = ScreeningSpec(enabled=True, until_included=True, setting="polling", description_tokens=2)
    session = Session.from_model(model, processor, dataset, vocabulary=vocabulary)
    kept, screening = screen_targets(session, candidates, spec, prompts=PromptSpec(), cell_spec=CellSpec(),
                                     max_images=2, exempt=[exempt])
    assert sorted(screening["image_id"]) == sorted(candidates["image_id"])
    assert set(screening["status"]) <= {"passed", "exempt", "failed_unablated", "failed_noised", "excluded",
                                        "not_tested"}
    tested = screening[screening["status"].isin(["passed", "failed_unablated", "failed_noised"])]
    yes = tested["baseline_answer"].str.match(r"^\W*yes\b", case=False)
    assert (tested["baseline_success"].astype(bool) == yes).all()
    passed = screening.loc[screening["status"] == "passed", "image_id"]
    assert set(kept["image_id"]) == set(passed) | {exempt}
    assert len(kept) <= 2 and kept.loc[kept["image_id"] == exempt, "screen"].tolist() == ["exempt"]

    # the exempt image is kept for VQA only: N1 asks it no polling or describe question
    selection = candidates[candidates["image_id"] == exempt].assign(screen="exempt")
    grids = cells_by_image(map_object_cells(dataset, selection, adapter, CellSpec()))
    table = run_token_ablation(session, selection, AblationSpec(ig_steps=1, ig_batch_size=1, description_tokens=2,
                                                                answer_tokens=1, random_counts=(2,)),
                               cells=grids, prompts=PromptSpec(), mean=torch.zeros(adapter.hidden_size))
    assert set(table["setting"]) == {"vqa"}


def test_a_target_the_model_names_is_tested_again_on_its_noised_image(world, synthetic, tmp_path):
    """The tiny random model's description of image 2 (a circle) says "tv" (seen once, kept by
    this test's vocabulary as a synonym of circle), so the filter noises it and asks again. The
    noised image is rebuilt here: every pixel of each 6 x 6 token that holds a mask pixel, found by
    scanning the cells, with the seeded draw; its description comes from transformers' own
    generate; the status follows from the two answers by a regular expression."""
    import re

    model, processor, adapter = synthetic("tiny-llama")
    dataset = CocoDataset.load(world, "val")
    candidates = select_targets(dataset, SelectionSpec(split="val", target_area_range=(0, 1e9),
                                                       exclude_crowd_targets=False, max_images=None))
    (tmp_path / "tv.yaml").write_text("name: tv\ncategories:\n  circle: [circle, tv]\n  square: [square]\n"
                                      "  triangle: [triangle]\n")
    vocabulary = load_vocabulary(tmp_path / "tv.yaml", categories=list(dataset.category_names().values()))
    spec = ScreeningSpec(enabled=True, description_tokens=8, seed=5)
    row = candidates[candidates["image_id"] == 2]
    session = Session.from_model(model, processor, dataset, vocabulary=vocabulary)
    kept, screening = screen_targets(session, row, spec, prompts=PromptSpec(), cell_spec=CellSpec(), max_images=None)
    result = screening.iloc[0]
    assert result["baseline_success"], result["baseline_answer"]   # the premise of this test

    mask = dataset.annotation_mask(int(row["annotation_id"].iloc[0]))
    region = np.zeros_like(mask)
    for top in range(0, 24, 6):
        for left in range(0, 24, 6):
            if mask[top:top + 6, left:left + 6].any():
                region[top:top + 6, left:left + 6] = True
    pixels = np.array(dataset.load_image(2).convert("RGB"))
    pixels[region] = np.random.default_rng([5, 2]).integers(0, 256, size=(int(region.sum()), 3), dtype=np.uint8)
    inputs = processor(images=Image.fromarray(pixels), text=adapter.format_prompt("Describe this image.", None),
                       return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert result["noised_answer"] == answer
    names = bool(re.search(r"\b(circles?|tvs?)\b", answer, re.IGNORECASE))
    assert result["status"] == ("failed_noised" if names else "passed")
    assert kept["image_id"].tolist() == ([] if names else [2])
