"""Object cells on tiled / dynamic-grid families (tiny random InternVL and Qwen2-VL), against a
brute-force per-token computation: mask -> tokens per tile (InternVL's thumbnail a tile of its
own), dilation and Chebyshev distance within a tile, and the positions N1 (ablation), N3
(blocking) and K3 (localization) actually use, derived independently with
`adapter.positions_of_cells`. Images are non-square, so InternVL cuts 2 or 4 tiles (+ thumbnail)
and Qwen2-VL makes a non-square grid."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from cocofixtures import CocoBuilder

from vlminterp.data.coco import CocoDataset, SelectionSpec, select_targets
from vlminterp.experiments.shared import session as session_module
from vlminterp.experiments.kaduri.images import select_images
from vlminterp.experiments.kaduri.localization import LocalizationSpec, localization
from vlminterp.experiments.neo.mean_embedding import compute_mean_embedding
from vlminterp.experiments.neo.ablation import AblationSpec, run_token_ablation
from vlminterp.experiments.neo.blocking import BlockingSpec, run_attention_blocking
from vlminterp.experiments.neo.prompts import PromptSpec
from vlminterp.experiments.shared.session import DescribePrompt, Session
from vlminterp.experiments.shared.cells import CellSpec, cells_by_image, map_object_cells
from vlminterp.geometry import dilate_tokens, last_row_tokens, object_tokens, token_distance
from vlminterp.interventions import InterventionEngine
from vlminterp.scoring.vocabulary import load_vocabulary

FAMILIES = ["tiny-internvl", "tiny-qwen2-vl"]
CELLS = CellSpec(geometry="resize")
PROMPTS = PromptSpec(vqa_question="What is the {name}?")


def _session(model, processor, dataset, geometry=CELLS.geometry) -> Session:
    """A Neo session: images shown with the cells' geometry, the shapes vocabulary."""
    return Session.from_model(model, processor, dataset, DescribePrompt(geometry=geometry),
                              vocabulary=load_vocabulary("shapes", categories=list(CATEGORIES)))
# (width, height), target rectangle (x, y, w, h) in pixels [x, x + w) x [y, y + h)
# tiny-internvl: 96x40 -> 2 tiles side by side (x 0-48, 48-96; tokens 12 x 10 px) + thumbnail;
# 40x88 -> 2 tiles stacked; 70x50 -> 2 x 2 tiles (8.75 x 6.25 px tokens) + thumbnail.
# tiny-qwen2-vl (8 px per token): 96x40 -> 5 x 12 grid, 40x88 -> 11 x 5, 70x50 -> 6 x 9.
IMAGES = [
    ((96, 40), (40, 10, 20, 12)),  # across the border of InternVL's two tiles
    ((96, 40), (38, 0, 10, 8)),  # inside tile 0, its right edge ON the tile border x = 48
    ((40, 88), (5, 30, 10, 30)),
    ((70, 50), (30, 20, 9, 9)),  # fractional token boxes, all four tiles
]
CATEGORIES = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> CocoDataset:
    b = CocoBuilder()
    ids = [b.category(name) for name in CATEGORIES]
    for index, (size, rect) in enumerate(IMAGES):
        image = b.image(*size)
        b.box(image, ids[index % len(ids)], *rect)
    return CocoDataset.load(b.write(tmp_path_factory.mktemp("tiled"), split="val"), "val")


@pytest.fixture(scope="module")
def selection(dataset) -> pd.DataFrame:
    return select_targets(dataset, SelectionSpec(split="val", target_area_range=(0, 1e9),
                                                 exclude_crowd_targets=False))


# ---- brute force ------------------------------------------------------------------------------------
def _rect(dataset, image_id) -> tuple[int, int, int, int]:
    (size, (x, y, w, h)) = IMAGES[image_id - 1]
    mask = np.zeros(size[::-1], dtype=bool)
    mask[y:y + h, x:x + w] = True
    (ann,) = dataset.annotations_of(image_id)
    assert np.array_equal(dataset.annotation_mask(ann["id"]), mask), "fixture: the mask is the rectangle"
    return x, y, x + w, y + h


def brute_object_tokens(cells, rect) -> np.ndarray:
    """Tokens whose box meets the rectangle with positive area, token by token."""
    x0, y0, x1, y1 = rect
    out = np.zeros(cells.num_tokens, dtype=bool)
    for k, (bx0, by0, bx1, by1) in enumerate(cells.boxes):
        out[k] = max(bx0, x0) < min(bx1, x1) and max(by0, y0) < min(by1, y1)
    return out


def brute_distance(cells, selected) -> np.ndarray:
    """Chebyshev distance to the nearest selected token of the same tile (inf: none there)."""
    out = np.full(cells.num_tokens, np.inf)
    for k in range(cells.num_tokens):
        for j in np.flatnonzero(selected):
            if cells.tile[j] == cells.tile[k]:
                d = max(abs(int(cells.row[k]) - int(cells.row[j])), abs(int(cells.col[k]) - int(cells.col[j])))
                out[k] = min(out[k], d)
    return out


def triples(cells, selected) -> list[tuple[int, int, int]]:
    return [(int(cells.tile[k]), int(cells.row[k]), int(cells.col[k])) for k in np.flatnonzero(selected)]


def expected_positions(adapter, input_ids, cells, selected, size) -> list[int]:
    """Sequence positions of a token set, independently: (tile, row, col) -> adapter.positions_of_cells."""
    return adapter.positions_of_cells(input_ids, triples(cells, selected), image_size=size).tolist()


def _positions(x) -> list[int]:
    return sorted(int(p) for p in torch.as_tensor(x).reshape(-1).tolist())


# ---- (1) masks -> tokens, per tile ------------------------------------------------------------------
@pytest.mark.parametrize("variant", FAMILIES)
def test_object_tokens_equal_the_brute_force_per_tile(variant, synthetic, dataset, selection):
    _, _, adapter = synthetic(variant)
    table = map_object_cells(dataset, selection, adapter, CELLS)
    assert list(table.columns[:6]) == ["image_id", "annotation_id", "cell_index", "tile", "cell_row", "cell_col"]
    shapes_seen = set()
    for image_id, part in table.groupby("image_id"):
        size = IMAGES[image_id - 1][0]
        cells = adapter.image_cells(size)
        shapes_seen.add(cells.tile_shapes)
        rect = _rect(dataset, image_id)
        base = brute_object_tokens(cells, rect)
        assert base.any()
        np.testing.assert_array_equal(part["tile"], cells.tile)
        np.testing.assert_array_equal(part[["cell_row", "cell_col"]], np.stack([cells.row, cells.col], 1))
        distance = brute_distance(cells, base)
        for b in CELLS.buffers:
            got = part[f"object_b{b}"].to_numpy()
            for tile in range(cells.num_tiles):  # per tile, so a failure names the tile
                in_tile = cells.tile == tile
                np.testing.assert_array_equal(got[in_tile], (distance <= b)[in_tile], err_msg=f"{image_id} t{tile} b{b}")
            np.testing.assert_array_equal(dilate_tokens(cells, base, b), distance <= b)
        np.testing.assert_array_equal(token_distance(cells, base), distance)
        np.testing.assert_array_equal(object_tokens(adapter, dataset.annotation_mask(int(part.annotation_id.iloc[0])))[0],
                                      base)  # K3's mapping is the same
        target = cells_by_image(part)[image_id]
        assert target.tile_shapes == cells.tile_shapes
        np.testing.assert_array_equal(target.last_row(), last_row_tokens(cells))
        if adapter.family == "internvl":
            thumbnail = cells.tile_kinds.index("thumbnail")
            assert cells.num_tiles >= 3 and base[cells.tile == thumbnail].any(), "the thumbnail shows the object too"
        else:
            assert cells.num_tiles == 1 and cells.tile_shapes[0][0] != cells.tile_shapes[0][1]
    assert len(shapes_seen) >= 2


def test_dilation_stops_at_the_tile_border(synthetic, dataset, selection):
    """Image 2's target ends exactly on InternVL's tile border: no token of tile 1 is an object
    token, at any buffer, though tile 1's first column touches the object in the image."""
    _, _, adapter = synthetic("tiny-internvl")
    table = map_object_cells(dataset, selection, adapter, CELLS)
    part = table[table.image_id == 2]
    # tile 0's tokens are 12 x 10 px: the target (x 38-48, y 0-8) is its token (row 0, col 3) alone
    assert part.loc[part.tile == 0, "object_b0"].sum() == 1
    for b in CELLS.buffers:
        assert not part.loc[part.tile == 1, f"object_b{b}"].any()
    assert part.loc[part.tile == 0, "object_b2"].sum() == 3 * 3  # rows 0-2, cols 1-3 of tile 0
    assert part.loc[part.tile == 2, "object_b0"].sum() == 1  # the thumbnail's token (row 0, col 1: x 24-48)


def test_a_geometry_the_family_lacks_fails_early_naming_it(synthetic, dataset, selection):
    model, processor, adapter = synthetic("tiny-internvl")
    with pytest.raises(ValueError, match="map_object_cells: the internvl family has no 'crop'"):
        map_object_cells(dataset, selection, adapter, CellSpec(geometry="crop"))
    with pytest.raises(ValueError, match="compute_mean_embedding: the internvl family has no 'pad'"):
        compute_mean_embedding(_session(model, processor, dataset, geometry="pad"), [1])


def test_a_cell_table_of_another_geometry_is_refused(synthetic, dataset, selection):
    model, processor, adapter = synthetic("tiny-qwen2-vl")
    table = map_object_cells(dataset, selection, adapter, CELLS)
    cells = cells_by_image(table)
    cells[1] = cells_by_image(table[table.image_id == 3].assign(image_id=1))[1]  # 11x5 tokens for a 5x12 image
    with pytest.raises(ValueError, match="prompt holds 60 image tokens but the cell table has 55"):
        run_attention_blocking(_session(model, processor, dataset), selection.iloc[:1], BlockingSpec(window=4),
                               cells=cells, prompts=PROMPTS)


# ---- (2) the experiments on those tokens -----------------------------------------------------------
def _spy_engine(monkeypatch) -> list:
    """Record (input_ids, conditions) of every call of the engine of a session opened after this
    (a stage's one engine)."""
    calls = []

    class Spy(InterventionEngine):
        def logits(self, prepared, conditions, *args, **kwargs):
            calls.append((prepared.input_ids.cpu(), list(conditions)))
            return super().logits(prepared, conditions, *args, **kwargs)

        def generate(self, prepared, conditions, *args, **kwargs):
            calls.append((prepared.input_ids.cpu(), list(conditions)))
            return super().generate(prepared, conditions, *args, **kwargs)

    monkeypatch.setattr(session_module, "InterventionEngine", Spy)
    return calls


@pytest.mark.parametrize("variant", FAMILIES)
def test_token_ablation_ablates_the_object_tokens(variant, synthetic, dataset, selection, monkeypatch):
    model, processor, adapter = synthetic(variant)
    cells = cells_by_image(map_object_cells(dataset, selection, adapter, CELLS))
    calls = _spy_engine(monkeypatch)
    session = _session(model, processor, dataset)
    mean, _ = compute_mean_embedding(session, [1, 3])
    spec = AblationSpec(ig_steps=2, ig_batch_size=2, description_tokens=3, answer_tokens=2, random_counts=(3, 500))
    table = run_token_ablation(session, selection, spec, cells=cells, prompts=PROMPTS, mean=mean)
    assert set(table["setting"]) == {"vqa", "polling", "generative"}
    images = [int(i) for i in selection.image_id for _ in range(4)]  # vqa, 2 x polling, generative, in order
    assert len(calls) == 4 * len(selection)
    for (input_ids, conditions), image_id in zip(calls, images):
        size = IMAGES[image_id - 1][0]
        layout = adapter.image_cells(size)
        base = brute_object_tokens(layout, _rect(dataset, image_id))
        distance = brute_distance(layout, base)
        (image_positions,) = adapter.image_positions(input_ids)
        ablated = {c.label: _positions(c.ablations[0].positions) for c in conditions[1:]}
        for b in CELLS.buffers:
            assert ablated[f"object_b{b}"] == expected_positions(adapter, input_ids, layout, distance <= b, size)
            matched = set(ablated.get(f"random_matched_b{b}", []))
            assert len(matched) in (0, int((distance <= b).sum()))
            assert matched <= set(expected_positions(adapter, input_ids, layout, distance > b, size))
        assert ablated["all_image"] == image_positions.tolist() == expected_positions(
            adapter, input_ids, layout, np.ones(layout.num_tokens, bool), size)
        assert len(ablated["random_n3"]) == 3 and set(ablated["random_n3"]) <= set(image_positions.tolist())
    rows = table[table.setting == "vqa"].set_index(["image_id", "condition"])
    for image_id in selection.image_id:
        layout = adapter.image_cells(IMAGES[image_id - 1][0])
        distance = brute_distance(layout, brute_object_tokens(layout, _rect(dataset, image_id)))
        for b in CELLS.buffers:
            assert rows.loc[(image_id, f"object_b{b}"), "n_tokens"] == (distance <= b).sum()
        assert rows.loc[(image_id, "all_image"), "n_tokens"] == layout.num_tokens
        assert rows.loc[(image_id, f"random_n{layout.num_tokens}"), "n_tokens"] == layout.num_tokens  # 500 capped


@pytest.mark.parametrize("variant", FAMILIES)
def test_attention_blocking_blocks_the_object_tokens(variant, synthetic, dataset, selection, monkeypatch):
    model, processor, adapter = synthetic(variant)
    cells = cells_by_image(map_object_cells(dataset, selection, adapter, CELLS))
    calls = _spy_engine(monkeypatch)
    session = _session(model, processor, dataset)
    spec = BlockingSpec(window=4, fixed_windows=(("all", 0.0, 1.0),))
    table = run_attention_blocking(session, selection, spec, cells=cells, prompts=PROMPTS)
    # images run in selection order, each as 3 engine calls: the sets read at the last position
    # (+ the unblocked row), then the sets read by the last row (object_to_last_row and
    # image_to_last_row), then object_to_text
    order = [int(i) for i in selection.image_id]
    assert len(calls) == 3 * len(order)
    per_image = {}
    for index, call in enumerate(calls):
        per_image.setdefault(order[index // 3], []).append(call)
    for image_id, image_calls in per_image.items():
        size = IMAGES[image_id - 1][0]
        layout = adapter.image_cells(size)
        base = brute_object_tokens(layout, _rect(dataset, image_id))
        distance = brute_distance(layout, base)
        input_ids = image_calls[0][0]
        last = input_ids.shape[1] - 1
        knockouts = {c.label.split(" ")[0]: c.knockouts[0] for _, conds in image_calls for c in conds if c.knockouts}
        for b in CELLS.buffers:
            ko = knockouts[f"object_b{b}"]
            assert _positions(ko.query_positions) == [last]
            assert _positions(ko.key_positions) == expected_positions(adapter, input_ids, layout, distance <= b, size)
        # the authors' sets: the control is every image token outside b1; b1 -> every last-row token
        assert _positions(knockouts["non_object"].key_positions) == expected_positions(adapter, input_ids, layout,
                                                                                     distance > 1, size)
        last_tile = layout.num_tiles - 1
        rows, cols = layout.tile_shapes[last_tile]
        last_row = [(last_tile, rows - 1, c) for c in range(cols)]
        last_row_positions = adapter.positions_of_cells(input_ids, last_row, image_size=size).tolist()
        ko = knockouts["object_to_last_row"]
        assert _positions(ko.query_positions) == last_row_positions
        assert _positions(ko.key_positions) == expected_positions(adapter, input_ids, layout, distance <= 1, size)
        ko = knockouts["image_to_last_row"]
        assert _positions(ko.query_positions) == last_row_positions
        assert _positions(ko.key_positions) == sorted(set(adapter.image_positions(input_ids)[0].tolist())
                                                      - set(last_row_positions))
        part = table[(table.image_id == image_id) & (table.block_set == "object_b1")]
        assert (part["n_blocked"] == (distance <= 1).sum()).all() and len(part) > 0
    assert set(per_image) == set(order)


@pytest.mark.parametrize("variant", FAMILIES)
def test_localization_peaks_and_distances_per_tile(variant, synthetic, dataset, monkeypatch):
    model, processor, adapter = synthetic(variant)
    session = _session(model, processor, dataset, geometry=None)
    words = session.tokenizer("a circle, a square and a triangle.", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(Session, "describe", lambda self, item: list(words) + [self.eos_token_ids[0]])
    images = select_images(dataset, len(IMAGES), seed=0)
    table = localization(session, images, LocalizationSpec(tolerance=1))
    assert set(table["image_id"]) == set(range(1, len(IMAGES) + 1))  # one present category per image
    L, H = adapter.n_layers, adapter.n_heads
    assert len(table) == len(IMAGES) * L * (H + 1)
    peak_tiles = set()
    for image_id, rows in table.groupby("image_id"):
        size = IMAGES[image_id - 1][0]
        layout = adapter.image_cells(size)
        base = brute_object_tokens(layout, _rect(dataset, image_id))
        distance = brute_distance(layout, base)
        item = session.encode(int(image_id))
        image = np.asarray(item.groups.image)
        assert image[base].tolist() == expected_positions(adapter, item.input_ids, layout, base, size)
        peak = rows["peak_cell"].to_numpy()
        np.testing.assert_array_equal(rows["peak_tile"], layout.tile[peak])
        np.testing.assert_array_equal(rows[["peak_row", "peak_col"]], np.stack([layout.row[peak], layout.col[peak]], 1))
        for row in rows.itertuples():  # the peak's (tile, row, col) names the image token at peak_cell
            cell = [(row.peak_tile, row.peak_row, row.peak_col)]
            assert adapter.positions_of_cells(item.input_ids, cell, image_size=size).tolist() == [image[row.peak_cell]]
        np.testing.assert_array_equal(rows["distance"], distance[peak])
        np.testing.assert_array_equal(rows["hit"], distance[peak] <= 1)
        assert (rows["n_object_cells"] == base.sum()).all()
        assert rows["chance"].iloc[0] == pytest.approx(np.mean(distance <= 1))
        peak_tiles |= set(rows["peak_tile"])
    if adapter.family == "internvl":
        assert len(peak_tiles) > 1


@pytest.mark.parametrize("variant", FAMILIES)
def test_logit_lens_tables_and_pages_per_tile(variant, synthetic, dataset, selection, tmp_path):
    import json
    import re

    from vlminterp.experiments.neo.logit_lens import LensSpec, run_logit_lens, write_lens_pages

    model, processor, adapter = synthetic(variant)
    cells = cells_by_image(map_object_cells(dataset, selection, adapter, CELLS))
    topk, scores = run_logit_lens(_session(model, processor, dataset), selection, LensSpec(top_k=2, background_buffer=1),
                                  cells=cells, prompts=PROMPTS)
    pages = write_lens_pages(topk, selection, cells, dataset, tmp_path, max_pages=None, scores=scores)
    for (path, _, _), image_id in zip(pages, selection.image_id):
        size = IMAGES[image_id - 1][0]
        layout = adapter.image_cells(size)
        base = brute_object_tokens(layout, _rect(dataset, image_id))
        first = topk[(topk.image_id == image_id) & (topk.layer == 0) & (topk["rank"] == 1)].sort_values("position")
        np.testing.assert_array_equal(first[["tile", "cell_row", "cell_col"]], np.stack([layout.tile, layout.row,
                                                                                          layout.col], 1))
        np.testing.assert_array_equal(first["is_object"], base)
        region = scores[(scores.image_id == image_id) & (scores.layer == 0)].set_index("region")["n_cells"]
        assert region["object"] == base.sum() and region["background"] == (brute_distance(layout, base) > 1).sum()
        text = path.read_text(encoding="utf-8")
        data = json.loads(re.search(r'id="lens-data">(.*?)</script>', text, re.S).group(1))
        np.testing.assert_allclose(np.array(data["boxes"], dtype=float), layout.boxes, atol=0.006)
        assert [r[3] for r in data["rows"]] == base.astype(int).tolist()
        if layout.num_tiles > 1:
            assert data["tiles"] == layout.tile.tolist() and len(data["grid"]) == layout.num_tiles
        else:
            assert "tiles" not in data and data["grid"] == list(layout.tile_shapes[0])
