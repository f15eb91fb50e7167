"""Neo et al.'s noising filter: keep a target only if the model names it and stops naming it once
the object's pixels are noise.

    candidates = select_targets(dataset, candidate_spec(selection_spec, ScreeningSpec(enabled=True)))
    selection, screening = screen_targets(session, candidates, ScreeningSpec(enabled=True),
                                          prompts=PromptSpec(), cell_spec=CellSpec(), max_images=1000)

Walks the candidates, tests each (unablated, then with the noised object), and returns the kept
targets and one screening row per candidate. Protocol and departures: docs/PROTOCOLS.md, "Targets
and object cells", the noising filter.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from vlminterp.data.coco import CocoDataset, SelectionSpec
from vlminterp.experiments.neo.prompts import PromptSpec
from vlminterp.experiments.shared.cells import CellSpec, check_geometry, image_object_tokens
from vlminterp.experiments.neo.specs import (  # noqa: F401  (the settings live in a light module)
    SCREEN_SETTINGS, NOISE_REGIONS, ORDERS, ScreeningSpec)
from vlminterp.batching import no_grad

if TYPE_CHECKING:  # loads torch and transformers: the stage's functions get an open session
    from vlminterp.experiments.shared.session import Session

log = logging.getLogger(__name__)

SCREENING_COLUMNS = ["order", "image_id", "annotation_id", "category", "status", "baseline_success",
                     "noised_success", "baseline_answer", "noised_answer"]


def candidate_spec(selection: SelectionSpec, spec: ScreeningSpec) -> SelectionSpec:
    """The selection rules of the candidates: `selection` itself, or, when the walk runs until
    `max_images` targets are kept, the same rules with `max_candidates` in place of `max_images`."""
    return replace(selection, max_images=spec.max_candidates) if spec.enabled and spec.until_included else selection


def noise_region_mask(mask: np.ndarray, cells, spec: ScreeningSpec, cell_spec: CellSpec) -> np.ndarray:
    """(height, width) bool: the pixels the noise replaces ("cells": every pixel meeting a b=0
    object token's box, edges exact; "mask": the mask's own pixels)."""
    mask = np.asarray(mask, dtype=bool)
    if spec.noise_region == "mask":
        return mask.copy()
    _, tokens, _ = image_object_tokens(mask, cells, replace(cell_spec, buffers=(0,)))
    region = np.zeros_like(mask)
    height, width = mask.shape
    for k in np.flatnonzero(tokens[0]):
        x0, y0, x1, y1 = cells.pixel_boxes.edges(int(k))
        columns = slice(max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), width))
        rows = slice(max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), height))
        region[rows, columns] = True
    return region


def noise_object(image: Image.Image, region: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """`image` (RGB) with the pixels of `region` replaced by uniform random values in 0..255."""
    pixels = np.array(image.convert("RGB"))
    if region.shape != pixels.shape[:2]:
        raise ValueError(f"noise region {region.shape} does not match the image {pixels.shape[:2]}")
    pixels[region] = rng.integers(0, 256, size=(int(region.sum()), 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def walk_order(candidates: pd.DataFrame, dataset: CocoDataset, spec: ScreeningSpec) -> pd.DataFrame:
    """The candidates in the order the walk tests them."""
    if spec.order == "file":
        place = {int(image_id): index for index, image_id in enumerate(dataset.coco.imgs)}
        keys = candidates["image_id"].map(lambda i: place[int(i)])
        return candidates.assign(_key=keys).sort_values(["_key", "annotation_id"], kind="stable").drop(columns="_key")
    permutation = np.random.default_rng([spec.seed, 7]).permutation(len(candidates))
    return candidates.iloc[permutation]


def choose_screened(ordered: pd.DataFrame, test: Callable[[object], dict], *, max_images: int | None,
                    until_included: bool, exempt: Iterable[int] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Walk `ordered` (candidate rows) and keep targets: exempt images first, untested; then each
    row whose `test(row)` (a dict: status, and the screening table's result columns) has status
    "passed", until `max_images` are kept (when `until_included`; the rest are "not_tested").
    Returns (kept candidate rows + `screen`, sorted by image id; the screening table)."""
    exempt = {int(i) for i in exempt}
    kept, records = [], []
    for order, row in enumerate(ordered.itertuples(index=False)):
        base = {"order": order, "image_id": int(row.image_id), "annotation_id": int(row.annotation_id),
                "category": str(row.category_name)}
        if int(row.image_id) in exempt:
            records.append({**base, "status": "exempt"})
            kept.append((order, "exempt"))
    for order, row in enumerate(ordered.itertuples(index=False)):
        if int(row.image_id) in exempt:
            continue
        base = {"order": order, "image_id": int(row.image_id), "annotation_id": int(row.annotation_id),
                "category": str(row.category_name)}
        if until_included and max_images is not None and len(kept) >= max_images:
            records.append({**base, "status": "not_tested"})
            continue
        result = test(row)
        records.append({**base, **result})
        if result["status"] == "passed":
            kept.append((order, "passed"))
    screening = pd.DataFrame(records, columns=SCREENING_COLUMNS).sort_values("order", kind="stable")
    screening = screening.reset_index(drop=True).astype({"baseline_success": "boolean", "noised_success": "boolean"})
    rows = ordered.iloc[[order for order, _ in kept]].assign(screen=[status for _, status in kept])
    return rows.sort_values(["image_id", "annotation_id"], kind="stable").reset_index(drop=True), screening


@no_grad
def screen_targets(session: Session, candidates: pd.DataFrame, spec: ScreeningSpec, *, prompts: PromptSpec,
                   cell_spec: CellSpec, max_images: int | None,
                   exempt: Iterable[int] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The noising filter over `candidates` (module docstring): (kept targets, screening table);
    the session shows images with `cell_spec.geometry` and names objects with its vocabulary."""
    from vlminterp.experiments.neo.ablation import _YES
    from vlminterp.interventions import Condition

    adapter, dataset, tokenizer, vocabulary = session.adapter, session.dataset, session.tokenizer, session.vocabulary
    check_geometry(adapter, cell_spec.geometry, "screen_targets")
    engine = session.engine  # one condition per call

    def names_object(image: Image.Image, name: str) -> tuple[bool, str]:
        text = prompts.describe if spec.setting == "generative" else prompts.polling.format(name=name)
        out = engine.generate(session.prepare(image, text), [Condition()], spec.description_tokens)
        answer = tokenizer.decode(out.tokens[0], skip_special_tokens=True).strip()
        success = name in vocabulary.categories_in(answer) if spec.setting == "generative" else bool(_YES.match(answer))
        return success, answer

    def test(row) -> dict:
        image_id, name = int(row.image_id), str(row.category_name)
        image = dataset.load_image(image_id)
        mask = dataset.annotation_mask(int(row.annotation_id))
        cells = adapter.image_cells(image.size, cell_spec.geometry)
        _, _, reason = image_object_tokens(mask, cells, cell_spec)
        if reason:
            log.info("image %s: target %s excluded before the noising test: %s", image_id, row.annotation_id, reason)
            return {"status": "excluded"}
        baseline, baseline_answer = names_object(image, name)
        if not baseline:
            return {"status": "failed_unablated", "baseline_success": False, "baseline_answer": baseline_answer}
        region = noise_region_mask(mask, cells, spec, cell_spec)
        noised_image = noise_object(image, region, np.random.default_rng([spec.seed, image_id]))
        noised, noised_answer = names_object(noised_image, name)
        return {"status": "failed_noised" if noised else "passed", "baseline_success": True,
                "noised_success": noised, "baseline_answer": baseline_answer, "noised_answer": noised_answer}

    ordered = walk_order(candidates, dataset, spec)
    progress = tqdm(total=len(ordered), desc="noising filter", mininterval=5)

    def counted(row) -> dict:
        progress.update(1)
        return test(row)

    kept, screening = choose_screened(ordered, counted, max_images=max_images, until_included=spec.until_included,
                                      exempt=exempt if spec.exempt_question_images else ())
    progress.close()
    return kept, screening
