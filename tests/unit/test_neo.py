"""Neo et al. N1-N3 on tiny random models: cells, prompts, windows, lens, IG, ablation, blocking, plots."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cocofixtures import CocoBuilder
from oomfixtures import out_of_memory_above

from vlminterp.batching import BatchOutOfMemoryError
from vlminterp.data.coco import CocoDataset, SelectionSpec, select_targets
from vlminterp.data.shapes import ShapesWorldSpec, generate_world
from vlminterp.experiments.neo.ablation import (AblationSpec, integrated_gradients, register_cells,
                                                run_token_ablation)
from vlminterp.experiments.neo.blocking import BlockingSpec, layer_windows, run_attention_blocking
from vlminterp.experiments.shared.layers import fraction_window
from vlminterp.experiments.neo.mean_embedding import (compute_mean_embedding, load_mean_embedding, mean_image_ids,
                                                      save_mean_embedding)
from vlminterp.experiments.neo.prompts import PromptSpec, question_image_ids, vqa_questions
from vlminterp.models.adapters import answer_first_token
from vlminterp.experiments.shared.session import DescribePrompt, Session
from vlminterp.experiments.shared.cells import CellSpec, cells_by_image, map_object_cells
from vlminterp.experiments.neo.logit_lens import LensSpec, lens_logits, run_logit_lens, write_lens_pages
from vlminterp.geometry import cell_box_grid, cell_overlap
from vlminterp.experiments.shared.cells import cells_by_image, map_object_cells
from vlminterp.interventions import Capture, From, InterventionEngine
from vlminterp.scoring.vocabulary import SynonymVocabulary, load_vocabulary

ROOT = Path(__file__).resolve().parents[2]
CELLS = CellSpec()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A shapes world at the tiny-llama geometry (24 px images, 6 px patches: a 4x4 grid)."""
    root = tmp_path_factory.mktemp("neo_world")
    generate_world(ShapesWorldSpec(image_size=24, cell_size=6, n_train=6, n_val=6, margin=1, rle_fraction=0.5,
                                   shapes=("circle", "square", "triangle"), colors=("red", "green", "blue")), root)
    return root


@pytest.fixture(scope="module")
def setup(world, synthetic):
    model, processor, adapter = synthetic("tiny-llama")
    dataset = CocoDataset.load(world, "val")
    selection = select_targets(dataset, SelectionSpec(split="val", target_area_range=(0, 1e9),
                                                      exclude_crowd_targets=False, max_images=3))
    cells = map_object_cells(dataset, selection, adapter, CELLS)
    shown = DescribePrompt(geometry=CELLS.geometry)
    mean, _ = compute_mean_embedding(Session.from_model(model, processor, CocoDataset.load(world, "train"), shown),
                                     [1, 2, 3])
    vocabulary = load_vocabulary("shapes", categories=list(dataset.category_names().values()))
    session = Session.from_model(model, processor, dataset, shown, vocabulary=vocabulary)
    return dict(model=model, processor=processor, adapter=adapter, dataset=dataset, selection=selection,
                cells=cells, grids=cells_by_image(cells), mean=mean, vocabulary=vocabulary, session=session)


# ---- cells --------------------------------------------------------------------------------------------
def test_padding_cells_have_zero_overlap_and_flat_boxes_reshape(synthetic):
    _, _, adapter = synthetic("tiny-llama")
    boxes = cell_box_grid(adapter.cell_boxes((24, 8), "pad"), 4, 4)  # 24x8 image padded to 24x24
    assert np.isnan(boxes[0, 0]).all() and not np.isnan(boxes[1, 0]).any()
    mask = np.ones((8, 24), dtype=bool)
    overlap = cell_overlap(mask, boxes)
    assert (overlap[0] == 0).all() and (overlap[3] == 0).all() and np.allclose(overlap[1:3], 1.0)
    with pytest.raises(ValueError):
        cell_box_grid(np.zeros((15, 4)), 4, 4)


def test_object_cells_of_a_coco_dataset_with_polygons_rle_and_crowd(tmp_path, synthetic):
    _, _, adapter = synthetic("tiny-llama")
    b = CocoBuilder()
    cat, dog = b.category("cat"), b.category("dog")
    wide = b.image(48, 24)  # crop geometry keeps the middle 24x24 (x in [12, 36))
    b.box(wide, cat, 12, 0, 6, 6)  # exactly cell (0, 0) of the crop
    tall = b.image(24, 36)
    mask = np.zeros((36, 24), dtype=bool)
    mask[20:24, 8:10] = True
    b.rle(tall, dog, mask, compressed=False, iscrowd=1)
    root = b.write(tmp_path, split="train")
    ds = CocoDataset.load(root, "train")
    sel = select_targets(ds, SelectionSpec(split="train", target_area_range=(0, 1e6), exclude_crowd_targets=False))
    grids = cells_by_image(map_object_cells(ds, sel, adapter, CELLS))
    first = grids[wide]
    assert first.object_b[0].sum() == 1 and first.object_b[0][0] and first.tile_shapes == ((4, 4),)
    assert first.object_b[1].sum() == 4 and first.object_b[2].sum() == 9
    assert all((grids[i].object_b[0] <= grids[i].object_b[1]).all() and
               (grids[i].object_b[1] <= grids[i].object_b[2]).all() for i in grids)
    # tall image: short side 24 -> crop rows [6, 30); mask rows 20-23 = crop rows 14-17 -> cell row 2
    tall_cells = grids[tall]
    assert {(r, c) for r, c, o in zip(tall_cells.row, tall_cells.col, tall_cells.object_b[0]) if o} == {(2, 1)}
    strict = cells_by_image(map_object_cells(ds, sel, adapter, CellSpec(min_overlap=0.5)))
    assert strict[tall].object_b[0].sum() == 0  # the mask covers 8/36 of its cell


# ---- prompts ---------------------------------------------------------------------------------------
def test_vqa_questions_from_template_fields_or_a_file(setup, tmp_path):
    ds, sel = setup["dataset"], setup["selection"]
    questions = vqa_questions(ds, sel, PromptSpec())
    for row in sel.itertuples():
        color = ds.annotation(row.annotation_id)["attributes"]["color"]
        assert questions[row.image_id] == f"What shape is the {color} object?"
    with pytest.raises(ValueError, match="questions file"):
        vqa_questions(ds, sel, PromptSpec(vqa_question="What {size} thing?"))
    path = tmp_path / "q.csv"
    pd.DataFrame({"image_id": sel["image_id"], "question": [f"Q{i}" for i in sel["image_id"]]}).to_csv(path, index=False)
    assert vqa_questions(ds, sel, PromptSpec(vqa_questions_file=str(path))) == {i: f"Q{i}" for i in sel["image_id"]}


def _one_question_file(setup, tmp_path):
    """A questions file with a question for the first selected image only (as the authors' 100)."""
    asked = int(setup["selection"]["image_id"].iloc[0])
    path = tmp_path / "authors.csv"
    pd.DataFrame({"image_id": [asked, 99999], "question": ["What is the thing?", "Not selected?"]}).to_csv(path, index=False)
    return asked, PromptSpec(vqa_questions_file=str(path), vqa_images="with_question")


def test_vqa_images_with_question_falls_back_to_the_template_for_the_others(setup, tmp_path):
    ds, sel = setup["dataset"], setup["selection"]
    asked, prompts = _one_question_file(setup, tmp_path)
    questions = vqa_questions(ds, sel, prompts)
    assert questions[asked] == "What is the thing?"
    for row in sel[sel.image_id != asked].itertuples():
        assert questions[row.image_id] == f"What shape is the {ds.annotation(row.annotation_id)['attributes']['color']} object?"
    assert question_image_ids(prompts) == {asked, 99999} and question_image_ids(PromptSpec()) is None
    with pytest.raises(ValueError, match="0 questions for image"):
        vqa_questions(ds, sel, dataclasses.replace(prompts, vqa_images="all"))  # every target needs one
    with pytest.raises(ValueError, match="needs a questions file"):
        PromptSpec(vqa_images="with_question")


def test_vqa_setting_and_blocking_run_only_on_images_with_a_question(setup, tmp_path):
    s = setup
    asked, prompts = _one_question_file(setup, tmp_path)
    spec = AblationSpec(ig_steps=2, ig_batch_size=2, answer_tokens=2, random_counts=(2,), settings=("vqa", "polling"))
    ablation = run_token_ablation(s["session"], s["selection"], spec, cells=s["grids"], prompts=prompts, mean=s["mean"])
    assert set(ablation.loc[ablation.setting == "vqa", "image_id"]) == {asked}
    assert set(ablation.loc[ablation.setting == "polling", "image_id"]) == set(s["selection"]["image_id"])
    blocking = run_attention_blocking(s["session"], s["selection"], BlockingSpec(window=2), cells=s["grids"],
                                      prompts=prompts)
    assert set(blocking["image_id"]) == {asked}


def test_answer_first_token_is_the_names_first_sub_token(synthetic):
    from vlminterp.organism import build_tokenizer

    word_level = build_tokenizer(["It", "is", "a", "circle", "square"])
    assert word_level.convert_ids_to_tokens(answer_first_token(word_level, "It is a", "circle")) == "circle"
    _, processor, _ = synthetic("tiny-llama")
    token = answer_first_token(processor.tokenizer, "It is a", "circle")
    ids = processor.tokenizer("It is a circle", add_special_tokens=False)["input_ids"]
    assert token in ids and processor.tokenizer.decode([token]).strip() in "circle"


def test_mean_embedding_round_trips_and_excludes_evaluation_images(setup, tmp_path):
    ids = mean_image_ids(setup["dataset"], 100, seed=0, exclude=[1, 2])
    assert 1 not in ids and 2 not in ids and ids == sorted(ids)
    path = tmp_path / "mean.safetensors"
    save_mean_embedding(setup["mean"], 48, [1, 2, 3], path)
    assert torch.equal(load_mean_embedding(path), setup["mean"])


# ---- windows ----------------------------------------------------------------------------------------
def test_fixed_windows_are_the_papers_on_32_layers_and_never_empty():
    windows = {w.name: w.layers for w in layer_windows(32, BlockingSpec()) if w.kind == "fixed"}
    assert windows["early"] == tuple(range(0, 10)) and windows["mid"] == tuple(range(11, 21))
    assert windows["late"] == tuple(range(21, 32)) and windows["early-mid"] == tuple(range(5, 15))
    assert windows["mid-late"] == tuple(range(15, 25)) and windows["all"] == tuple(range(32))
    for depth in (1, 2, 3, 4):
        windows = layer_windows(depth, BlockingSpec(window=5))
        assert all(w.layers and max(w.layers) < depth for w in windows)
        assert [w.layers[0] for w in windows if w.kind == "sliding"] == list(range(depth))
    assert fraction_window(2, 11 / 32, 21 / 32) == (1,)


# ---- N2 ---------------------------------------------------------------------------------------------
def test_lens_normalises_once_last_layer_equals_model_logits(setup, make_inputs):
    model, processor, adapter = setup["model"], setup["processor"], setup["adapter"]
    inputs = make_inputs(processor, adapter)
    with torch.no_grad():
        read = Capture([f"resid_post.{adapter.n_layers - 1}"], From(0))
        with read.reading(adapter):
            out = model(**inputs)
        last = lens_logits(adapter, read.record[f"resid_post.{adapter.n_layers - 1}"][None])
    assert torch.allclose(last, out.logits, atol=1e-5)


def test_logit_lens_tables(setup, tmp_path):
    s = setup
    topk, scores = run_logit_lens(s["session"], s["selection"], LensSpec(top_k=3), cells=s["grids"], prompts=PromptSpec())
    n_images, n_layers = len(s["selection"]), s["adapter"].n_layers + 1
    assert len(topk) == n_images * 16 * n_layers * 3
    assert (topk.groupby(["image_id", "position", "layer"])["prob"].apply(lambda p: p.is_monotonic_decreasing)).all()
    assert len(scores) == n_images * n_layers * 2
    assert scores[["name_in_topk", "name_rank1", "name_top1"]].stack().between(0, 1).all()
    assert (scores["name_rank"] >= 1).all() and (scores["n_categories"] == 3).all()
    object_cells = s["cells"].groupby("image_id")["object_b0"].sum()
    got = scores[(scores.region == "object") & (scores.layer == 0)].set_index("image_id")["n_cells"]
    assert (got == object_cells.reindex(got.index)).all()
    assert (scores["null_category"].isin(s["selection"]["category_name"])).all()
    assert scores[["null_in_topk", "null_rank1", "null_top1"]].stack().between(0, 1).all()
    # name_in_topk and its null recomputed from the top-k table and each label's crediting pieces
    from vlminterp.scoring.pieces import first_pieces

    credits = first_pieces(s["processor"].tokenizer, s["vocabulary"], "It is a").credits
    assert all(credits[c] for c in s["selection"]["category_name"])  # every label scorable: the check bites
    for row in scores[scores.region == "object"].itertuples():
        part = topk[(topk.image_id == row.image_id) & (topk.layer == row.layer) & topk.is_object.astype(bool)]
        for label, value in ((row.category, row.name_in_topk), (row.null_category, row.null_in_topk)):
            hit = part.groupby("position")["token_id"].apply(lambda ids: bool(set(ids) & credits[label]))
            assert value == pytest.approx(hit.mean()) if credits[label] else np.isnan(value)

    pages = write_lens_pages(topk, s["selection"], s["grids"], s["dataset"], tmp_path / "pages", max_pages=2,
                             scores=scores)
    assert len(pages) == 2 and (tmp_path / "pages" / "index.html").is_file()
    for _, title, summary in pages:  # the index reads the scores table: one definition
        image_id = int(title.split()[1].rstrip(":"))
        obj = scores[(scores.image_id == image_id) & (scores.region == "object")].set_index("layer")["name_in_topk"]
        best = summary["best layer (object name_in_topk)"]
        if best is None:
            assert summary["hit"] in ("miss", "unscorable") and not (obj > 0).any()
        else:
            assert summary["hit"] == "hit" and obj.loc[best] == obj.max() > 0
            assert summary["name_in_topk there (last layer if none)"] == obj.loc[best]


def test_null_labels_permute_the_selections_categories():
    from vlminterp.experiments.neo.logit_lens import permuted_labels

    selection = pd.DataFrame({"image_id": [5, 3, 9, 1, 7, 2], "category_name": list("aabbcc")})
    labels = permuted_labels(selection, 3)
    assert sorted(labels) == [1, 2, 3, 5, 7, 9] and sorted(labels.values()) == list("aabbcc")
    assert labels == permuted_labels(selection.iloc[::-1], 3)  # row order (a shard's view) does not matter
    assert any(permuted_labels(selection, seed) != labels for seed in range(4, 10))


def test_logit_lens_skips_excluded_targets(setup):
    """A target with no visible cell is not run by N2 (as by N1 and N3)."""
    s = setup
    first = int(s["selection"]["image_id"].iloc[0])
    grids = {**s["grids"], first: dataclasses.replace(s["grids"][first], excluded="object outside the crop")}
    topk, scores = run_logit_lens(s["session"], s["selection"], LensSpec(top_k=1), cells=grids, prompts=PromptSpec())
    assert first not in set(scores["image_id"]) and first not in set(topk["image_id"])
    assert set(scores["image_id"]) == set(s["selection"]["image_id"]) - {first}


def test_lens_pages_show_hits_and_misses():
    from vlminterp.experiments.neo.logit_lens import example_targets

    selection = pd.DataFrame({"image_id": [1, 2, 3, 4, 5], "category_name": list("abcde")})
    peak = {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.5, 5: np.nan}  # image 4 the only hit; 5 unscorable
    scores = pd.DataFrame([{"image_id": i, "region": r, "layer": l, "name_in_topk": v if r == "object" else 1.0}
                           for i, v in peak.items() for r in ("object", "background") for l in (0, 1)])
    chosen = example_targets(selection, scores, 2)["image_id"].tolist()
    assert chosen == [4, 1]  # a hit and a miss, each the first of its kind in selection order
    assert example_targets(selection, scores, None)["image_id"].tolist() == [1, 2, 3, 4, 5]


def test_lens_summaries_by_category_and_null_control_by_hand():
    from vlminterp.experiments.neo.logit_lens import summarize_lens

    rows = []
    for image_id, category, hit, null_hit in ((1, "a", 1.0, 0.0), (2, "a", 0.5, 1.0), (3, "b", 0.0, 0.0),
                                              (4, "c", np.nan, 0.0)):
        rows.append({"image_id": image_id, "category": category, "layer": 0, "region": "object",
                     "name_in_topk": hit, "name_top1": hit, "name_rank1": hit, "name_rank": 1.0, "n_categories": 4,
                     "null_in_topk": null_hit, "null_top1": null_hit, "null_rank1": null_hit})
    by_category, control = summarize_lens(pd.DataFrame(rows))
    a = by_category[by_category.category == "a"].iloc[0]
    assert a["n_images"] == 2 and a["name_in_topk"] == pytest.approx(0.75)
    assert by_category[by_category.category == "b"].iloc[0]["name_top1"] == 0.0
    c = by_category[by_category.category == "c"].iloc[0]  # unscorable: counted, no value
    assert c["n_images"] == 1 and c["n_scored"] == 0 and np.isnan(c["name_in_topk"])
    row = control.iloc[0]
    assert row["name_rank1"] == pytest.approx(0.5) and row["name_rank1_null"] == pytest.approx(1 / 4)
    assert row["chance_rank1"] == 0.25 and row["n_images"] == 4


# ---- N1 ---------------------------------------------------------------------------------------------
def test_register_cells_flag_norm_outliers():
    embeddings = torch.ones(16, 8)
    embeddings[5] *= 10
    grid = register_cells(embeddings, (4, 4), 2.0)
    assert grid.sum() == 1 and grid[1, 1]


def test_integrated_gradients_are_complete(setup, make_inputs):
    """Attributions sum to p(input) - p(baseline) (IG completeness; midpoint rule, many steps)."""
    model, processor, adapter = setup["model"], setup["processor"], setup["adapter"]
    engine = InterventionEngine(model, adapter)
    inputs = make_inputs(processor, adapter)
    prepared = engine.prepare(inputs["input_ids"], inputs["pixel_values"])
    (positions,) = adapter.image_positions(prepared.input_ids)
    target = 7
    attribution = integrated_gradients(adapter, prepared.inputs_embeds, positions, setup["mean"], target,
                                       steps=64, batch_size=16)
    baseline = prepared.inputs_embeds.clone()
    baseline[:, positions] = setup["mean"]
    with torch.no_grad():
        p = [adapter.unembed(adapter.language_model_forward(e, use_cache=False)[0][:, -1]).softmax(-1)[0, target]
             for e in (prepared.inputs_embeds, baseline)]
    assert attribution.shape == (16,)
    assert attribution.sum() == pytest.approx(float(p[0] - p[1]), rel=0.05, abs=1e-6)


def _ablation(setup, selection, **overrides):
    settings = dict(ig_steps=2, ig_batch_size=2, description_tokens=6, answer_tokens=2, random_counts=(2, 5, 40))
    spec = AblationSpec(**{**settings, **overrides})
    s = setup
    return run_token_ablation(s["session"], selection, spec, cells=s["grids"], prompts=PromptSpec(), mean=s["mean"])


def test_token_ablation_table(setup):
    table = _ablation(setup, setup["selection"])
    grids = setup["grids"]
    assert set(table["setting"]) == {"generative", "polling", "vqa"}
    for (image_id, setting, kind), part in table.groupby(["image_id", "setting", "question_kind"]):
        assert (part["condition"] == "none").sum() == 1
        assert part["included"].nunique() == 1 and part["baseline_success"].nunique() == 1
        obj = part.set_index("condition")
        for b in (0, 1, 2):
            assert obj.loc[f"object_b{b}", "n_tokens"] == grids[image_id].object_b[b].sum()
            if f"random_matched_b{b}" in obj.index:
                assert obj.loc[f"random_matched_b{b}", "n_tokens"] == obj.loc[f"object_b{b}", "n_tokens"]
        assert obj.loc["all_image", "n_tokens"] == 16 and obj.loc["random_n16", "n_tokens"] == 16  # 40 capped
    assert not (table["flipped"] & ~table["included"]).any()
    assert (table.loc[table.setting == "vqa", "p_correct"].between(0, 1)).all()
    assert set(table.loc[table.setting == "polling", "question_kind"]) == {"target", "absent"}
    assert not table.loc[table.setting != "polling", "question_kind"].ne("target").any()


def test_token_ablation_rows_do_not_depend_on_the_shard(setup):
    together = _ablation(setup, setup["selection"], settings=("vqa", "polling"))
    apart = pd.concat([_ablation(setup, setup["selection"].iloc[[i]], settings=("vqa", "polling"))
                       for i in range(len(setup["selection"]))], ignore_index=True)
    pd.testing.assert_frame_equal(together, apart)


def test_token_ablation_out_of_memory_retries_give_the_same_table(setup):
    """Any language-model batch above 3 raises CUDA OOM: the engine and IG batches halve, the table is
    that of a run with memory to spare, and the rows record the sizes used and the retries."""
    selection = setup["selection"].iloc[:2]
    clean = _ablation(setup, selection, ig_steps=4, ig_batch_size=4)
    assert (clean[["batch_size", "ig_batch_size", "oom_retries"]].drop_duplicates().values.tolist()
            == [[64, 4, 0]])
    with out_of_memory_above(setup["adapter"].language_model, 3) as oom:
        table = _ablation(setup, selection, ig_steps=4, ig_batch_size=4)
    assert oom.raised > 0
    batching = ["batch_size", "ig_batch_size", "oom_retries"]
    pd.testing.assert_frame_equal(table.drop(columns=batching), clean.drop(columns=batching),
                                  check_exact=False, rtol=1e-5, atol=1e-7)  # floats: batch-size rounding
    assert (table["batch_size"] <= 3).all() and (table["ig_batch_size"] <= 3).all()
    first = table[table["image_id"] == table["image_id"].iloc[0]]
    assert first["oom_retries"].min() >= 2  # the engine batch and the IG batch both halved on image 1
    later = table[table["image_id"] != table["image_id"].iloc[0]]
    assert (later["oom_retries"] == 0).all()  # the halved sizes stay for the rest of the stage
    with out_of_memory_above(setup["adapter"].language_model, 0), \
            pytest.raises(BatchOutOfMemoryError, match="N1 token ablation.*batch size 1"):
        _ablation(setup, selection, ig_steps=4, ig_batch_size=4)


def test_zero_ablation_of_every_image_token_equals_zeroed_embeddings(setup):
    table = _ablation(setup, setup["selection"].iloc[:1], settings=("vqa",), replacement="zero")
    s = setup
    image_id = int(s["selection"]["image_id"].iloc[0])
    question = vqa_questions(s["dataset"], s["selection"].iloc[:1], PromptSpec())[image_id]
    prompt = s["adapter"].format_prompt(question) + " It is a"
    image = s["adapter"].prepare_image(s["dataset"].load_image(image_id), "crop")
    encoding = s["processor"](images=image, text=prompt, return_tensors="pt")
    ids = encoding["input_ids"]
    embeds = s["adapter"].embed(ids, **s["adapter"].image_inputs(encoding)).detach()
    embeds[ids == s["adapter"].image_token_id] = 0
    with torch.no_grad():
        hidden, _ = s["adapter"].language_model_forward(embeds, use_cache=False)
        probs = s["adapter"].unembed(hidden[:, -1]).softmax(-1)[0]
    token = answer_first_token(s["processor"].tokenizer, "It is a", str(s["selection"]["category_name"].iloc[0]))
    row = table[table.condition == "all_image"].iloc[0]
    assert row["p_correct"] == pytest.approx(float(probs[token]), rel=1e-4)


# ---- N3 ---------------------------------------------------------------------------------------------
def test_attention_blocking_table(setup):
    s = setup
    spec = BlockingSpec(window=2)
    table = run_attention_blocking(s["session"], s["selection"], spec, cells=s["grids"], prompts=PromptSpec())
    n_windows = len(layer_windows(s["adapter"].n_layers, spec))
    per_image = 1 + n_windows * (3 + 1 + 1 + 1 + 1)
    assert (table.groupby("image_id").size() == per_image).all()
    assert np.allclose(table["drop"], table["p_baseline"] - table["p_correct"])
    none = table[table.block_set == "none"]
    assert (none["drop"] == 0).all()
    # blocking every image cell from the last position in all layers = blocking b0 + non_object together;
    # here only check that blocking changes something and that windows are recorded
    assert (table.loc[table.block_set != "none", "drop"].abs() > 0).any()
    sliding = table[(table.window_kind == "sliding") & (table.block_set == "object_b0")]
    assert sorted(sliding["window_start"].unique()) == list(range(s["adapter"].n_layers))
    apart = pd.concat([run_attention_blocking(s["session"], s["selection"].iloc[[i]], spec, cells=s["grids"],
                                              prompts=PromptSpec()) for i in range(len(s["selection"]))],
                      ignore_index=True)
    pd.testing.assert_frame_equal(table, apart)


def test_blocking_drop_of_top1_is_each_runs_own_top1_probability(setup):
    """drop_of "top1" (the authors'): base minus blocked probability of each run's own top-1 token,
    checked against a plain forward pass of the unblocked prompt; "correct" keeps the correct
    token's drop; the two tables differ only in drop, relative_drop and drop_of."""
    from vlminterp.experiments.neo.blocking import summarize_blocking

    s = setup
    top1 = run_attention_blocking(s["session"], s["selection"], BlockingSpec(window=2, drop_of="top1"),
                                  cells=s["grids"], prompts=PromptSpec())
    correct = run_attention_blocking(s["session"], s["selection"], BlockingSpec(window=2), cells=s["grids"],
                                     prompts=PromptSpec())
    assert np.allclose(top1["drop"], top1["p_top1_baseline"] - top1["p_top1"])
    assert np.allclose(correct["drop"], correct["p_baseline"] - correct["p_correct"])
    same = [c for c in top1.columns if c not in ("drop", "relative_drop", "drop_of")]
    pd.testing.assert_frame_equal(top1[same], correct[same])
    assert (top1["p_top1"] >= top1["p_correct"] - 1e-6).all()
    # independent: the unblocked prompt's top-1 probability from one plain forward pass
    target = s["selection"].iloc[0]
    prepared = s["session"].prepare(s["dataset"].load_image(int(target.image_id)),
                                    vqa_questions(s["dataset"], s["selection"].iloc[[0]], PromptSpec())[
                                        int(target.image_id)], answer_prefix=PromptSpec().vqa_answer_prefix)
    with torch.no_grad():
        hidden, _ = s["adapter"].language_model_forward(prepared.inputs_embeds, use_cache=False)
        probs = s["adapter"].unembed(hidden[:, -1]).float().softmax(-1)[0]
    row = top1[(top1.image_id == int(target.image_id)) & (top1.block_set == "none")].iloc[0]
    assert row["p_top1"] == pytest.approx(float(probs.max()), rel=1e-4)
    # accuracy: over the included images (correct) or over all images (top1, the authors')
    table = correct.assign(included=correct["image_id"] == correct["image_id"].iloc[0], correct=True)
    n_images = table["image_id"].nunique()
    assert (summarize_blocking(table)["accuracy"] == 1.0).all()
    assert np.allclose(summarize_blocking(table.assign(drop_of="top1"))["accuracy"], 1 / n_images)


# ---- figures ------------------------------------------------------------------------------------------
def test_figures_are_written(setup, tmp_path):
    from vlminterp.plots.neo import plot_blocking_drops, plot_flip_rates, plot_lens_curves
    from vlminterp.summaries import ablation_summary, blocking_drops_summary, lens_curves_summary

    s = setup
    ablation = _ablation(setup, setup["selection"], settings=("vqa", "polling"))
    ablation["included"] = True  # a random model identifies nothing; plot every row
    ablation["flipped"] = ~ablation["success"]
    _, scores = run_logit_lens(s["session"], s["selection"], LensSpec(), cells=s["grids"], prompts=PromptSpec())
    blocking = run_attention_blocking(s["session"], s["selection"], BlockingSpec(window=2), cells=s["grids"],
                                      prompts=PromptSpec())
    blocking["included"] = True
    # one more target, excluded (no object cell): counted in a footnote, not plotted
    ablation = pd.concat([ablation, ablation[ablation.condition == "none"].iloc[:2].assign(
        image_id=-1, included=False, flipped=False, excluded="object outside the crop")], ignore_index=True)
    blocking = pd.concat([blocking, blocking.iloc[:1].assign(image_id=-1, included=False,
                                                             excluded="object outside the crop")], ignore_index=True)
    for plot, summarize, table, name in ((plot_flip_rates, ablation_summary, ablation, "flips"),
                                         (plot_lens_curves, lens_curves_summary, scores, "lens"),
                                         (plot_blocking_drops, blocking_drops_summary, blocking, "blocking")):
        paths = plot(summarize(table, n_resamples=200), table, tmp_path / name)
        assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)


def test_geometry_adapter_without_weights_matches_the_loaded_one(tmp_path, synthetic):
    from vlminterp.models.loading import ModelSpec, load_adapter

    model, processor, adapter = synthetic("tiny-odd-grid")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    light = load_adapter(ModelSpec(str(tmp_path)), weights=False)
    assert light.grid == adapter.grid
    assert np.array_equal(light.cell_boxes((50, 30), "crop"), adapter.cell_boxes((50, 30), "crop"))
    assert light.format_prompt("Hi") == adapter.format_prompt("Hi")


# ---- the authors' N3 sets and the matched random draws, on a hand-drawn 4x4 grid --------------------------
def _hand_grid(object_b: dict[int, list[int]], side: int = 4, image_id: int = 1):
    """A single-tile side x side token table whose object sets are the given token lists."""
    from vlminterp.experiments.shared.cells import TargetCells

    n = side * side
    flags = {b: np.isin(np.arange(n), tokens) for b, tokens in object_b.items()}
    return TargetCells(image_id=image_id, tile=np.zeros(n, np.int64), row=np.arange(n) // side,
                       col=np.arange(n) % side, tile_shapes=((side, side),), boxes=np.zeros((n, 4)),
                       overlap=np.zeros(n), object_b=flags)


def test_blocking_sets_are_the_authors_on_a_hand_drawn_grid():
    """Object at token 5 (row 1, col 1) of a 4x4 grid; image tokens at positions 10..25, last = 30.
    b1 by hand: rows 0-2 x cols 0-2 = tokens 0,1,2,4,5,6,8,9,10."""
    from vlminterp.experiments.neo.blocking import block_sets

    b1 = [0, 1, 2, 4, 5, 6, 8, 9, 10]
    cells = _hand_grid({0: [5], 2: list(range(16))})     # b1 not studied: dilated from b0 here
    positions = np.arange(10, 26)
    sets = {name: (list(q), list(k)) for name, q, k in block_sets(cells, BlockingSpec(), positions, 30)}
    assert sets["object_b0"] == ([30], [15])
    assert sets["non_object"] == ([30], [10 + t for t in (3, 7, 11, 12, 13, 14, 15)])
    assert sets["object_to_last_row"] == ([22, 23, 24, 25], [10 + t for t in b1])
    assert sets["image_to_last_row"] == ([22, 23, 24, 25], list(range(10, 22)))
    assert sets["object_to_text"] == ([26, 27, 28, 29, 30], [15])
    # the other choices: the control outside b0, the last row outside the blocked object
    other = BlockingSpec(control_buffer=0, last_row_buffer=0, last_row_queries="outside_object")
    cells = _hand_grid({0: [13]})                        # the object in the last row
    sets = {name: (list(q), list(k)) for name, q, k in block_sets(cells, other, positions, 30)}
    assert sets["non_object"] == ([30], [10 + t for t in range(16) if t != 13])
    assert sets["object_to_last_row"] == ([22, 24, 25], [23])


def test_matched_random_draws_avoid_the_whole_buffered_set():
    """random_matched_b{b} never touches the object dilated b times (8x8 grid, object at token 27),
    and is skipped when fewer tokens than |b| lie outside it."""
    from vlminterp.experiments.neo.ablation import token_sets

    b1 = [18, 19, 20, 26, 27, 28, 34, 35, 36]
    b2 = [r * 8 + c for r in range(1, 6) for c in range(1, 6)]
    cells = _hand_grid({0: [27], 1: b1, 2: b2}, side=8)
    for seed in range(20):
        sets = {s.condition: s for s in token_sets(cells, AblationSpec(seed=seed), None, None)}
        for b in (0, 1, 2):
            drawn = sets[f"random_matched_b{b}"].cells
            assert drawn.sum() == cells.object_b[b].sum()
            assert not (drawn & cells.object_b[b]).any(), (seed, b)
    crowded = _hand_grid({0: list(range(30)), 1: list(range(40))}, side=8)
    names = {s.condition for s in token_sets(crowded, AblationSpec(), None, None)}
    assert "random_matched_b0" in names and "random_matched_b1" not in names   # 40 > 64 - 40


def test_high_gradient_sweep_takes_the_top_n_tokens_by_hand():
    """Attribution scores by hand on a 4x4 grid: the sweep's sets are the n largest, for every n of
    random_counts (capped at 16), beside the count-matched set."""
    from vlminterp.experiments.neo.ablation import token_sets

    scores = np.array([0.1, 9, 0.2, 3, 0.3, 8, 0.4, 0.5, 7, 0.6, 0.7, 0.8, 6, 0.9, 1.0, 5])
    cells = _hand_grid({0: [5]})
    sets = {s.condition: s for s in token_sets(cells, AblationSpec(random_counts=(2, 5, 40)), None, scores)}
    assert np.flatnonzero(sets["high_gradient_n2"].cells).tolist() == [1, 5]
    assert np.flatnonzero(sets["high_gradient_n5"].cells).tolist() == [1, 5, 8, 12, 15]   # 9, 8, 7, 6, 5
    assert sets["high_gradient_n16"].cells.all() and sets["high_gradient_n16"].n_requested == 16
    assert np.flatnonzero(sets["high_gradient_b0"].cells).tolist() == [1]
    assert {s.family for name, s in sets.items() if name.startswith("high_gradient")} == {"high_gradient"}


def test_integrated_gradients_the_authors_way_equal_a_step_by_step_loop(setup, make_inputs):
    """objective="logit", points="linspace", reduce="sum_of_abs" (the authors' recipe) against a
    plain loop written here: one forward and backward per alpha in linspace(0, 1, steps), gradients
    summed, times (input - baseline) / steps, |.| summed over the hidden dimension."""
    model, processor, adapter = setup["model"], setup["processor"], setup["adapter"]
    inputs = make_inputs(processor, adapter)
    prepared = InterventionEngine(model, adapter).prepare(inputs["input_ids"], inputs["pixel_values"])
    (positions,) = adapter.image_positions(prepared.input_ids)
    target, steps = 11, 4
    attribution = integrated_gradients(adapter, prepared.inputs_embeds, positions, setup["mean"], target, steps=steps,
                                       batch_size=3, objective="logit", points="linspace", reduce="sum_of_abs")
    embeds = prepared.inputs_embeds.detach().float()
    baseline = embeds.clone()
    baseline[:, positions] = setup["mean"].float()
    total = torch.zeros_like(embeds)
    for alpha in (0.0, 1 / 3, 2 / 3, 1.0):
        point = (baseline + alpha * (embeds - baseline)).requires_grad_(True)
        hidden, _ = adapter.language_model_forward(point, use_cache=False)
        adapter.unembed(hidden[:, -1])[0, target].backward()
        total += point.grad
    expected = ((embeds - baseline) * total / steps).abs().sum(dim=-1)[0, positions]
    np.testing.assert_allclose(attribution, expected.numpy(), rtol=1e-4, atol=1e-7)
    signed = integrated_gradients(adapter, prepared.inputs_embeds, positions, setup["mean"], target, steps=steps,
                                  batch_size=3, objective="logit", points="linspace")
    assert not np.allclose(np.abs(signed), attribution)     # the two rankings differ on this model


def test_vqa_readouts_exclude_a_target_whose_answer_piece_begins_another_category(setup):
    """N1's VQA setting and N3 score one token; where the name's first piece also begins a form of
    another category, the target is excluded from them (and only them) with the reason."""
    s = setup
    tokenizer = s["processor"].tokenizer
    circle = answer_first_token(tokenizer, "It is a", "circle")
    synonym = next(w for w in ("circlet", "circleish", "circ", "cir", "ci", "c")
                   if answer_first_token(tokenizer, "It is a", w) == circle)  # a square synonym starting like "circle"
    vocabulary = load_vocabulary("shapes", categories=list(s["dataset"].category_names().values()))
    clashing = SynonymVocabulary("clash", {**vocabulary.categories, "square": ("square", synonym)})
    session = Session.from_model(s["model"], s["processor"], s["dataset"], s["session"].prompt, vocabulary=clashing)
    spec = AblationSpec(ig_steps=2, ig_batch_size=2, description_tokens=4, answer_tokens=2, random_counts=(2,),
                        settings=("vqa", "polling"))
    table = run_token_ablation(session, s["selection"], spec, cells=s["grids"], prompts=PromptSpec(), mean=s["mean"])
    blocking = run_attention_blocking(session, s["selection"], BlockingSpec(window=2), cells=s["grids"],
                                      prompts=PromptSpec())
    assert {"circle", "square"} & set(s["selection"]["category_name"])  # the test is not vacuous
    for target in s["selection"].itertuples():
        vqa = table[(table.image_id == target.image_id) & (table.setting == "vqa")]
        polling = table[(table.image_id == target.image_id) & (table.setting == "polling")]
        blocked = blocking[blocking.image_id == target.image_id]
        assert (polling["excluded"].fillna("") == "").all()  # polling reads no first piece
        if target.category_name in ("circle", "square"):  # circle's own piece begins "square"'s synonym
            assert len(vqa) == 1 and not vqa["included"].any() and len(blocked) == 1
            other = "square" if target.category_name == "circle" else "circle"
            assert other in vqa["excluded"].iloc[0] and other in blocked["excluded"].iloc[0]
        else:
            assert (vqa["excluded"].fillna("") == "").all() and len(vqa) > 1
