"""Kaduri et al. (K1-K4) library code on tiny random models: token groups, the description's
attention, knockout conditions, localization geometry, cache re-prompting, plots."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vlminterp.batching import BatchOutOfMemoryError
from vlminterp.data.coco import CocoDataset
from vlminterp.data.questions import build_pope_questions
from vlminterp.data.shapes import ShapesWorldSpec, generate_world
from vlminterp.experiments.kaduri.attention import (AttentionFractionSpec, attention_fractions, key_shares,
                                                    summarize_attention_fractions)
from vlminterp.workflow import stages
from vlminterp.experiments.shared.description_attention import KEY_GROUPS
from vlminterp.experiments.kaduri.images import select_images
from vlminterp.experiments.kaduri.text import token_mentions, token_spans
from vlminterp.experiments.shared.session import DescribePrompt, Session
from vlminterp.experiments.kaduri.knockout import (KnockoutSpec, chance_recall, group_knockouts,
                                                   knockout_chance, knockout_conditions, llm_judge_knockouts,
                                                   summarize_knockouts, window_grid)
from vlminterp.experiments.kaduri.localization import LocalizationSpec, localization, summarize_localization
from vlminterp.experiments.kaduri.reprompt import (RepromptSpec, parse_yes_no, reprompting, summarize_reprompting,
                                                   top_k_count)
from vlminterp.geometry import category_mask, cell_overlap, chebyshev_distance, dilate_cells, object_tokens
from vlminterp.interventions import Capture, From, reference_generate
from vlminterp.models.adapters import LLAVA_SYSTEM_PROMPT, TOKEN_GROUPS
from vlminterp.scoring.vocabulary import SynonymVocabulary, load_vocabulary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the fake chat server
from fake_chat_server import FakeChatServer  # noqa: E402
from oomfixtures import out_of_memory_above  # noqa: E402

METHODS = ("single_turn", "full_image", "full_cache", "prompt_cache", "image_topk", "image_topk_after_prompt",
           "prompt_image_topk", "description_text")


def dataset_vocabulary(name: str, dataset: CocoDataset) -> SynonymVocabulary:
    """The judge's vocabulary (packaged name or YAML path), extended by the dataset's categories."""
    return load_vocabulary(name, categories=list(dataset.category_names().values()))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kaduri_world")
    generate_world(ShapesWorldSpec.tiny(n_train=2, n_val=6), root)
    return root


@pytest.fixture(scope="module")
def dataset(world) -> CocoDataset:
    return CocoDataset.load(world, "val")


def _session(synthetic, dataset, variant="tiny-llama", attn="sdpa", **prompt) -> Session:
    model, processor, _ = synthetic(variant, attn)
    return Session.from_model(model, processor, dataset, DescribePrompt(**prompt), vocabulary="shapes")


# ---- token groups (adapter) ------------------------------------------------------------------------
@pytest.mark.parametrize("system_prompt", [None, LLAVA_SYSTEM_PROMPT])
@pytest.mark.parametrize("variant", ["tiny-llama", "tiny-phi3"])
def test_token_groups_partition_the_prompt(synthetic, make_inputs, variant, system_prompt):
    _, processor, adapter = synthetic(variant)
    ids = make_inputs(processor, adapter, system_prompt=system_prompt)["input_ids"]
    groups = adapter.token_groups(ids)
    T = ids.shape[1]
    assert groups.prompt_length == T
    every = sorted(groups.system + groups.image + groups.query)
    assert every == list(range(T)), "system, image and query must partition the prompt"
    assert list(groups.image) == adapter.image_positions(ids)[0].tolist()
    assert groups.bos == (0,) and int(ids[0, 0]) == adapter.bos_token_id
    decode = lambda pos: processor.tokenizer.decode(ids[0, list(pos)])  # noqa: E731
    assert "Describe this image." in decode(groups.query)
    assert decode(groups.query).rstrip().endswith(("ASSISTANT:", "<|assistant|>"))
    if system_prompt:
        assert "curious human" in decode(groups.system)
    assert groups.generated(3) == (T, T + 1, T + 2)
    labels = groups.labels(T + 2)
    assert labels[0] == "bos" and set(labels) == {"bos", *TOKEN_GROUPS}


def test_token_groups_reject_a_prompt_without_image(synthetic):
    _, processor, adapter = synthetic("tiny-llama")
    ids = processor.tokenizer("USER: hello ASSISTANT:", return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="no image token"):
        adapter.token_groups(ids)


# ---- the description's attention ---------------------------------------------------------------------
@pytest.mark.parametrize("variant, attn", [("tiny-llama", "sdpa"), ("tiny-gqa", "eager")])
def test_reforward_attention_equals_per_step_capture_during_generation(synthetic, dataset, variant, attn):
    """One forward over prompt + generated tokens gives each decode step's attention rows."""
    session = _session(synthetic, dataset, variant, attn)
    item = session.encode(dataset.image_ids()[0])
    P = item.prompt_length
    steps = Capture([f"attn.{l}" for l in range(session.adapter.n_layers)], From(P - 1))
    out = session.engine.generate(item.prepared, [steps], 10, eos_token_id=-1)  # never stops early
    generated = out.tokens[0]
    assert len(generated) == 10
    record = session.description_attention(item, generated, image_rows=[P - 1, P + 3])
    assert record.rows(0).tolist() == list(range(P - 1, P + 9))
    image = torch.as_tensor(item.groups.image)
    labels = item.groups.labels(P + 9)
    for layer in range(session.adapter.n_layers):
        slots = steps.record.positions(f"attn.{layer}")
        probs = steps.record[f"attn.{layer}"].transpose(0, 1)  # (H, n, K_max), rows zero-padded
        assert slots.tolist() == list(range(P - 1, P + 9))
        mass = torch.stack([probs[..., torch.as_tensor(labels == g)].sum(-1) for g in KEY_GROUPS], dim=-1)
        torch.testing.assert_close(record.groups_of_layer(layer), mass, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(record.image_row(layer, P + 3), probs[:, 4, image], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(record.image_received[layer], probs[..., image].sum(1), atol=1e-5, rtol=1e-4)


def test_attention_fractions_sum_to_one_and_per_head_averages(synthetic, dataset):
    session = _session(synthetic, dataset, description_tokens=8)
    images = select_images(session.dataset, 2, seed=0)
    table = attention_fractions(session, images, AttentionFractionSpec())
    sums = table.groupby(["image_id", "layer", "head"])["mean"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-6)
    shares = table.groupby(["image_id", "layer", "head"])["key_share"].sum()
    np.testing.assert_allclose(shares.to_numpy(), 1.0, atol=1e-9)
    per_head = table[table["head"] >= 0].groupby(["image_id", "layer", "group"])["mean"].mean()
    averaged = table[table["head"] == -1].set_index(["image_id", "layer", "group"])["mean"]
    np.testing.assert_allclose(per_head.sort_index().to_numpy(), averaged.sort_index().to_numpy(), atol=1e-6)
    assert set(table["n_tokens"]) == {8}  # 8 generated tokens: the prefill's last row and 7 read back
    summary = summarize_attention_fractions(table)
    assert len(summary) == session.adapter.n_layers * len(KEY_GROUPS)
    assert (summary["low"] <= summary["mean"] + 1e-12).all() and (summary["mean"] <= summary["high"] + 1e-12).all()


@pytest.mark.parametrize("include_prefill_row", [True, False])
def test_attention_fractions_count_the_rows_of_every_generation_step(synthetic, dataset, include_prefill_row):
    """K1 against transformers' own `generate(output_attentions=True)`: the last row of every step,
    the prefill's included (Kaduri et al.'s attention store), heads averaged, averaged over steps."""
    session = _session(synthetic, dataset, "tiny-gqa", "eager", description_tokens=6)
    image_id = dataset.image_ids()[0]
    spec = AttentionFractionSpec(per_head=False, include_prefill_row=include_prefill_row)
    table = attention_fractions(session, pd.DataFrame({"image_id": [image_id]}), spec)
    item = session.encode(image_id)
    n_generated = int(table["n_generated"].iloc[0])  # EOS may end the description before the cap
    with torch.no_grad():
        out = session.model.generate(input_ids=item.input_ids, **item.image_inputs, max_new_tokens=n_generated,
                                     do_sample=False, output_attentions=True, return_dict_in_generate=True)
    assert len(out.attentions) == n_generated  # one step per generated token, step 0 = the prefill
    steps = out.attentions if include_prefill_row else out.attentions[1:]
    image = torch.as_tensor(item.groups.image)
    for layer in range(session.adapter.n_layers):
        rows = torch.stack([step[layer][0, :, -1, :item.prompt_length].float() for step in steps])  # (n, H, P)
        expected = rows[..., image].sum(-1).mean(dim=1)  # per row: image mass, heads averaged
        got = table[(table["layer"] == layer) & (table["group"] == "image")]
        assert int(got["n_tokens"].iloc[0]) == len(steps)
        np.testing.assert_allclose(float(got["mean"].iloc[0]), float(expected.mean()), atol=1e-5)


def test_key_shares_count_keys_up_to_each_row():
    labels = np.array(["bos", "system", "image", "image", "query", "generated", "generated"])
    shares = key_shares(labels, np.array([5, 6]))
    np.testing.assert_allclose(shares[0], [1 / 6, 1 / 6, 2 / 6, 1 / 6, 1 / 6])
    np.testing.assert_allclose(shares[1], [1 / 7, 1 / 7, 2 / 7, 1 / 7, 2 / 7])


def test_per_image_results_do_not_depend_on_the_other_images(synthetic, dataset):
    session = _session(synthetic, dataset, description_tokens=6)
    images = select_images(session.dataset, 3, seed=0)
    spec = AttentionFractionSpec()
    together = attention_fractions(session, images, spec)
    alone = attention_fractions(session, images.iloc[[2]], spec)
    pd.testing.assert_frame_equal(together[together["image_id"] == images["image_id"].iloc[2]].reset_index(drop=True),
                                  alone)


def test_select_images_is_seeded_and_bounded(dataset):
    first, again = select_images(dataset, 4, seed=3), select_images(dataset, 4, seed=3)
    pd.testing.assert_frame_equal(first, again)
    assert len(select_images(dataset, 100, seed=0)) == len(dataset.image_ids())
    assert all(c for c in first["categories"])


# ---- K2 --------------------------------------------------------------------------------------------
def test_window_grid():
    assert window_grid(2, 1) == [(0, 0), (0, 1), (1, 1)]
    grid = window_grid(32, 4)
    assert len(grid) == 36 and (0, 31) in grid and (28, 31) in grid and all(a <= b for a, b in grid)
    assert window_grid(5, 2) == [(0, 1), (0, 3), (0, 4), (2, 3), (2, 4), (4, 4)]
    assert window_grid(4, 0) == []


def test_knockout_conditions_block_the_right_pairs(synthetic, make_inputs):
    _, processor, adapter = synthetic("tiny-llama")
    ids = make_inputs(processor, adapter)["input_ids"]
    groups = adapter.token_groups(ids)
    spec = KnockoutSpec(start_layer_step=2, window_targets=("generated",), fixed_windows=(), sweep_layers="from_l",
                        sweep_target="generated")
    conditions = {c.label: c for c in knockout_conditions(groups, 4, spec)}
    assert list(conditions)[:4] == ["none", "image->generated", "image->query", "image->query+generated"]
    (gen,) = conditions["image->generated"].condition.knockouts
    assert gen.query_positions == From(groups.prompt_length) and gen.layers is None
    assert conditions["image->generated"].condition.earliest_touched() == groups.prompt_length  # prefill untouched
    assert conditions["image->query"].condition.earliest_touched() == groups.query[0]
    (window,) = conditions["window 1-2 (generated)"].condition.knockouts
    assert list(window.layers) == [0, 3]
    assert conditions["window 0-3 (generated)"].condition.knockouts[0].is_noop()
    assert [l for l in conditions if l.startswith("from")] == ["from 0", "from 2"]
    assert list(conditions["from 2"].condition.knockouts[0].layers) == [2, 3]


def test_knockout_defaults_are_the_authors_windows_and_sweep(synthetic, make_inputs):
    """The authors' LLaVA runs on 32 layers: the image visible only in layers 4..20 (blocked where
    layer_idx < 4 or > 20) for generated (decode rows), query (prefill rows after the image) and
    all; the sweep blocks query + generated where layer_idx > l."""
    _, processor, adapter = synthetic("tiny-llama")
    groups = adapter.token_groups(make_inputs(processor, adapter)["input_ids"])
    conditions = {c.label: c for c in knockout_conditions(groups, 32, KnockoutSpec(window_step=0, start_layer_step=8))}
    hidden = [l for l in range(32) if l < 4 or l > 20]
    image, query, decode = list(groups.image), list(groups.query), From(groups.prompt_length)
    expected = {"generated": [(decode, hidden)], "query": [(query, hidden)],
                "query+generated": [(query, hidden), (decode, hidden)]}
    for target, pairs in expected.items():
        fixed = conditions[f"fixed 4-20 ({target})"]
        assert (fixed.family, fixed.target, fixed.layer_start, fixed.layer_end) == ("fixed_window", target, 4, 20)
        got = [(k.query_positions, list(k.layers)) for k in fixed.condition.knockouts]
        assert got == pairs and all(list(k.key_positions) == image for k in fixed.condition.knockouts)
    sweep = {label: c for label, c in conditions.items() if c.family == "from_layer"}
    assert list(sweep) == ["after 0", "after 8", "after 16", "after 24"]
    for l in (0, 8, 16, 24):
        condition = sweep[f"after {l}"]
        assert condition.target == "query+generated" and condition.layer_start == l + 1
        assert [list(k.layers) for k in condition.condition.knockouts] == [list(range(l + 1, 32))] * 2
    assert "after 31" not in conditions  # would block nothing
    with pytest.raises(ValueError, match="sweep_layers"):
        KnockoutSpec(sweep_layers="before")


def test_knockouts_equal_the_naive_reference_and_blind_runs_ignore_the_image(synthetic, dataset):
    session = _session(synthetic, dataset)
    image_ids = dataset.image_ids()[:2]
    spec = KnockoutSpec(start_layer_step=2, window_step=2)
    blind = []
    for image_id in image_ids:
        item = session.encode(image_id)
        conditions = knockout_conditions(item.groups, session.adapter.n_layers, spec)
        fast = session.engine.generate(item.prepared, [c.condition for c in conditions], 6, session.eos_token_ids)
        inputs = dict(item.image_inputs)
        pixel_values = inputs.pop("pixel_values")
        slow = [reference_generate(session.model, session.adapter, item.input_ids, pixel_values,
                                   c.condition, 6, session.eos_token_ids, **inputs) for c in conditions]
        assert fast.tokens == slow, "batched, prefix-shared knockouts differ from the oracle"
        blind.append(fast.tokens[[c.label for c in conditions].index("image->query+generated")])
    assert blind[0] == blind[1], "with the image cut off from every token the output cannot depend on it"


def test_group_knockouts_table_and_judge(synthetic, dataset):
    session = _session(synthetic, dataset, description_tokens=5)
    images = select_images(dataset, 2, seed=0)
    table = group_knockouts(session, images, KnockoutSpec())
    n_conditions = len(knockout_conditions(session.encode(int(images["image_id"][0])).groups,
                                           session.adapter.n_layers, KnockoutSpec()))
    assert len(table) == 2 * n_conditions
    none = table[table["condition"] == "none"]
    assert (none["f1"] == 1.0).all() and (none["description"] == none["reference"]).all()
    assert {"gt_f1", "gt_recall", "categories"} <= set(table.columns)
    summary = summarize_knockouts(table, require_reference=False)
    assert summary["condition"].tolist() == table["condition"].iloc[:n_conditions].tolist()
    assert summary["n_images"].eq(2).all()


def test_group_knockouts_out_of_memory_halves_the_batch_with_the_same_table(synthetic, dataset):
    images = select_images(dataset, 2, seed=0)
    spec = KnockoutSpec(window_step=2, start_layer_step=2)
    clean = group_knockouts(_session(synthetic, dataset, description_tokens=4), images, spec)
    assert set(clean["batch_size"]) == {64} and set(clean["oom_retries"]) == {0}
    session = _session(synthetic, dataset, description_tokens=4)
    with out_of_memory_above(session.adapter.language_model, 3) as oom:
        table = group_knockouts(session, images, spec)
    assert oom.raised > 0 and oom.largest_run <= 3
    batching = ["batch_size", "oom_retries"]
    pd.testing.assert_frame_equal(table.drop(columns=batching), clean.drop(columns=batching))
    assert (table["batch_size"] <= 3).all()
    per_image = table.groupby("image_id", sort=False)["oom_retries"].first().tolist()
    assert per_image[0] >= 1 and per_image[1] == 0  # the halved size stays for the next image
    with out_of_memory_above(session.adapter.language_model, 0), \
            pytest.raises(BatchOutOfMemoryError, match="K2 group knockouts.*batch size 1"):
        group_knockouts(session, images, spec)


def test_a_stage_runs_on_its_shard_of_the_images_table(synthetic, world, dataset, tmp_path):
    """What rule run_group_knockouts calls: plain values in (the session's and the section's dicts,
    paths), the table of its shard out, equal to the experiment run on those rows."""
    from vlminterp.io import write_table
    from vlminterp.testing.synthetic import save_synthetic

    model, processor, _ = synthetic("tiny-llama")
    save_synthetic(model, processor, tmp_path / "model")
    images = select_images(dataset, 3, seed=0)
    write_table(images, tmp_path / "images.csv")
    session = dict(model={"id_or_path": str(tmp_path / "model")}, dataset_dir=str(world), split="val",
                   prompt={"text": "Describe this image.", "description_tokens": 3}, vocabulary="shapes")
    section = {"window_step": 0, "start_layer_step": 0, "fixed_windows": []}
    table = stages.group_knockouts(session=session, spec=section, images=tmp_path / "images.csv", shard="1",
                                   images_per_shard=2)
    expected = group_knockouts(_session(synthetic, dataset, description_tokens=3), images.iloc[2:],
                               KnockoutSpec(window_step=0, start_layer_step=0, fixed_windows=()))
    pd.testing.assert_frame_equal(table, expected.reset_index(drop=True))
    assert table["image_id"].tolist() == [int(images["image_id"].iloc[2])] * 4


def test_judge_scores_on_a_hand_made_table(dataset):
    vocabulary = dataset_vocabulary("shapes", dataset)
    from vlminterp.experiments.kaduri.knockout import judge_knockouts

    table = pd.DataFrame({"image_id": [1, 1, 1], "condition": ["none", "a", "b"],
                          "description": ["A red circle and a square.", "", "Two circles."],
                          "reference": ["A red circle and a square."] * 3})
    judged = judge_knockouts(table, vocabulary, pd.Series(["circle;triangle"] * 3))
    assert judged["f1"].tolist() == [1.0, 0.0, pytest.approx(2 / 3)]
    assert judged["gt_recall"].tolist() == [0.5, 0.0, 0.5]


def test_chance_recall():
    assert chance_recall(2, 6) == pytest.approx(1 / 3)
    assert chance_recall(10, 6) == 1.0
    table = pd.DataFrame({"condition": ["image->query+generated"] * 2, "n_candidate": [2, 2]})
    assert knockout_chance(table, 4) == 0.5


def test_llm_judge_scores_the_same_generations(synthetic, dataset, tmp_path):
    from vlminterp.scoring.llm_judge import LLMJudgeSpec

    table = pd.DataFrame({"image_id": [1, 1], "condition": ["none", "image->generated"], "family": ["none", "all_layers"],
                          "target": ["", "generated"], "layer_start": [-1, 0], "layer_end": [-1, 3], "n_layers": [4, 4],
                          "description": ["There is a red circle and a blue square.", "There is a red circle."],
                          "n_generated": [9, 5], "reference": ["There is a red circle and a blue square."] * 2,
                          "f1": [1.0, 0.67]})
    with FakeChatServer() as server:
        spec = LLMJudgeSpec(base_url=server.base_url, model="fake", api_key_env=None,
                            cache_path=str(tmp_path / "cache.jsonl"))
        judged = llm_judge_knockouts(table, spec, dataset_vocabulary("shapes", dataset))
    assert judged["f1"].tolist() == [1.0, pytest.approx(2 / 3)]
    assert judged["recall"].tolist() == [1.0, 0.5]


# ---- K3 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry, size", [("crop", (40, 24)), ("crop", (24, 40)), ("pad", (40, 24)), ("pad", (24, 24))])
def test_object_cells_use_the_adapter_geometry_painted_image(synthetic, geometry, size):
    """Paint a red object on a grey image; the cells it is mapped to (mask -> adapter.cell_boxes)
    are the patches of the model's input that are red."""
    _, processor, adapter = synthetic("tiny-llama")  # 24 px input, 6 px patches: 4 x 4 cells
    width, height = size
    rng = np.random.default_rng(0)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 9)), int(rng.integers(0, height - 9))
        w, h = int(rng.integers(5, 10)), int(rng.integers(5, 10))
        pixels = np.full((height, width, 3), 128, dtype=np.uint8)
        pixels[y0:y0 + h, x0:x0 + w] = (255, 0, 0)
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y0 + h, x0:x0 + w] = True
        shown = adapter.prepare_image(Image.fromarray(pixels), geometry)
        values = processor.image_processor(shown, return_tensors="pt")["pixel_values"][0]  # (3, 24, 24) normalised
        redness = (values[0] - values[1]).numpy()  # high where red
        g, p = adapter.grid, adapter.grid.patch_size
        red_share = redness.reshape(g.rows, p, g.cols, p).transpose(0, 2, 1, 3).reshape(g.rows, g.cols, -1)
        red_share = (red_share > 1.0).mean(axis=-1)
        boxes = adapter.cell_boxes((width, height), geometry)
        overlap = np.full(g.num_cells, 0.0)
        valid = ~np.isnan(boxes).any(axis=1)
        overlap[valid] = cell_overlap(mask, boxes[valid][None])[0]
        overlap = overlap.reshape(g.rows, g.cols)
        cells, _ = object_tokens(adapter, mask, geometry)  # per token = the grid's cells, row-major
        np.testing.assert_array_equal(cells, (overlap > 0).reshape(-1))
        # resampling blurs edges: compare where the answer is unambiguous
        assert np.all(red_share[overlap > 0.6] > 0.3), (geometry, size, overlap, red_share)
        assert np.all(red_share[overlap == 0] < 0.1), (geometry, size, overlap, red_share)


def test_chebyshev_distance_map():
    cells = np.zeros((4, 5), dtype=bool)
    cells[1, 1] = True
    distance = chebyshev_distance(cells)
    assert distance[1, 1] == 0 and distance[0, 0] == 1 and distance[3, 4] == 3
    np.testing.assert_array_equal(distance <= 1, dilate_cells(cells, 1))
    assert np.isinf(chebyshev_distance(np.zeros((2, 2), dtype=bool))).all()


def test_token_spans_and_mentions(synthetic, dataset):
    _, processor, _ = synthetic("tiny-llama")
    ids = processor.tokenizer("There is a red circle and two squares.", add_special_tokens=False)["input_ids"]
    text, spans = token_spans(processor.tokenizer, ids)
    assert text == processor.tokenizer.decode(ids)
    mentions = token_mentions(text, spans, dataset_vocabulary("shapes", dataset))
    assert [m.category for m in mentions] == ["circle", "square"]
    for m in mentions:
        covered = text[spans[m.first_token][0]:spans[m.last_token][1]]
        assert m.surface in covered


def test_localization_on_a_fixed_description(synthetic, dataset, monkeypatch):
    """The peak, hit and chance of each mention follow the recorded attention and the object's cells."""
    session = _session(synthetic, dataset)
    vocabulary = dataset_vocabulary("shapes", dataset)
    images = select_images(dataset, 6, seed=0)
    row = images.iloc[0]
    category = row["categories"].split(";")[0]
    words = session.tokenizer(f"There is a {category} here.", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(Session, "describe", lambda self, item: list(words) + [self.eos_token_ids[0]])
    for kind in ("predicting", "token"):
        table = localization(session, images.iloc[[0]], LocalizationSpec(attention_row=kind, tolerance=0, scope="all"))
        L, H = session.adapter.n_layers, session.adapter.n_heads
        assert len(table) == L * (H + 1)
        item = session.encode(int(row["image_id"]))
        first = [m.first_token for m in token_mentions(*token_spans(session.tokenizer, words), vocabulary)][0]
        position = item.prompt_length + first - (kind == "predicting")
        assert set(table["position"]) == {position}
        record = session.description_attention(item, list(words) + [session.eos_token_ids[0]], image_rows=[position])
        means = table[table["head"] == -1].sort_values("layer")
        for layer, peak in zip(means["layer"], means["peak_cell"]):
            assert peak == int(record.image_row(layer, position).mean(0).argmax())

        cells = object_tokens(session.adapter, category_mask(dataset, int(row["image_id"]), category))[0].reshape(-1)
        assert (table["hit"] == cells[table["peak_cell"]]).all()
        assert table["chance"].iloc[0] == pytest.approx(cells.mean())
    summary = summarize_localization(table, band_width=2)
    assert len(summary) == (L + 1) // 2 and summary["n_mentions"].iloc[0] == 1


def test_localization_null_control_scores_the_peak_against_another_images_object(synthetic, dataset, monkeypatch):
    """Permuted labels (issue 22, point 10): each peak is also scored against the object of another
    image, whose cells are counted here from that image's own mask."""
    session = _session(synthetic, dataset)
    images = select_images(dataset, 6, seed=0)
    row = images.iloc[0]
    category = row["categories"].split(";")[0]
    words = session.tokenizer(f"There is a {category} here.", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(Session, "describe", lambda self, item: list(words) + [self.eos_token_ids[0]])
    table = localization(session, images.iloc[[0]], LocalizationSpec(tolerance=0, scope="all"))
    other, name = int(table["permuted_image_id"].iloc[0]), table["permuted_category"].iloc[0]
    assert other != int(row["image_id"]) and table["permuted_image_id"].nunique() == 1
    assert name in {dataset.category_name(a["category_id"]) for a in dataset.annotations_of(other)}
    cells = object_tokens(session.adapter, category_mask(dataset, other, name))[0].reshape(-1)
    assert (table["hit_permuted"] == cells[table["peak_cell"]].astype(float)).all()
    assert table["chance_permuted"].iloc[0] == pytest.approx(cells.mean())
    again = localization(session, images.iloc[[0]], LocalizationSpec(tolerance=0, scope="all"))
    pd.testing.assert_frame_equal(table, again)  # seeded by (image, mention): the same every run


def test_localization_excludes_and_counts_a_mention_without_object_cells(synthetic, dataset, monkeypatch):
    """A mention whose object has no cell (here: its mask emptied) gets one excluded row, and the
    summary leaves it out of the accuracy and counts it."""
    import vlminterp.experiments.kaduri.localization as k3

    session = _session(synthetic, dataset)
    images = select_images(dataset, 6, seed=0)
    category = images.iloc[0]["categories"].split(";")[0]
    words = session.tokenizer(f"There is a {category} here.", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(Session, "describe", lambda self, item: list(words) + [self.eos_token_ids[0]])
    monkeypatch.setattr(k3, "category_mask", lambda ds, image_id, name: np.zeros_like(category_mask(ds, image_id, name)))
    table = localization(session, images.iloc[[0]], LocalizationSpec(scope="all"))
    assert len(table) == 1 and table["excluded"].tolist() == ["empty mask"] and not table["hit"].any()
    assert table[["layer", "head", "peak_cell", "n_object_cells"]].values.tolist() == [[-1, -1, -1, 0]]
    summary = summarize_localization(table)
    assert summary.empty and "n_excluded" in summary.columns
    monkeypatch.setattr(k3, "category_mask", category_mask)
    kept = localization(session, images.iloc[[0]], LocalizationSpec(scope="all"))
    assert kept["excluded"].eq("").all() and (kept["n_object_cells"] > 0).all()
    both = summarize_localization(pd.concat([table, kept]))
    assert (both["n_excluded"] == 1).all() and (both["n_mentions"] == 1).all()
    assert both["accuracy"].tolist() == summarize_localization(kept)["accuracy"].tolist()


def test_localization_scope_keeps_the_objects_the_image_to_generated_knockout_removes(synthetic, dataset,
                                                                                       monkeypatch):
    """`disappears` against the naive oracle's image->generated description; scope "disappearing"
    keeps only those mentions."""
    from vlminterp.experiments.kaduri import localization as k3
    from vlminterp.interventions import Condition, Knockout, reference_generate

    session = _session(synthetic, dataset)
    vocabulary = dataset_vocabulary("shapes", dataset)
    images = select_images(dataset, 6, seed=0)
    row = images[images["categories"].str.count(";") >= 1].iloc[0]  # two annotated categories
    first, second = row["categories"].split(";")[:2]
    words = session.tokenizer(f"A {first} and a {second}.", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(Session, "describe", lambda self, item: list(words) + [self.eos_token_ids[0]])
    image = pd.DataFrame([row])
    table = localization(session, image, LocalizationSpec(scope="all", per_head=False))
    item = session.encode(int(row["image_id"]))
    inputs = dict(item.image_inputs)
    blind = Condition(knockouts=(Knockout(From(item.prompt_length), list(item.groups.image)),))
    tokens = reference_generate(session.model, session.adapter, item.input_ids, inputs.pop("pixel_values"), blind,
                                300, session.eos_token_ids, **inputs)
    named = {m.category for m in vocabulary.find(session.decode(tokens))}
    flags = table.drop_duplicates("mention").set_index("category")["disappears"]
    assert flags.to_dict() == {c: c not in named for c in flags.index}
    monkeypatch.setattr(k3, "knocked_out_categories", lambda *args: {first})  # the first object survives
    scoped = localization(session, image, LocalizationSpec(per_head=False))
    assert set(scoped["category"]) == {second} and scoped["disappears"].all()


def test_localization_interval_resamples_images_not_mentions():
    """Two images, ten mentions each, all hits in one and none in the other: resampling images gives
    0, 0.5 or 1 (the interval spans [0, 1]); resampling the 20 mentions would give about 0.5 +- 0.22."""
    rows = [{"image_id": image, "mention": m, "layer": 0, "head": -1, "hit": image == 1, "chance": 0.1,
             "excluded": ""} for image in (1, 2) for m in range(10)]
    summary = summarize_localization(pd.DataFrame(rows))
    assert summary[["accuracy", "low", "high", "n_mentions", "n_images"]].values.tolist() == [[0.5, 0.0, 1.0, 20, 2]]


# ---- K4 --------------------------------------------------------------------------------------------
def test_top_k_count_and_yes_no():
    assert [top_k_count(f, 36) for f in (0.02, 0.05, 0.1)] == [1, 1, 3]   # 0.72 -> 1 (at least one), 1.8, 3.6
    assert [top_k_count(f, 576) for f in (0.02, 0.05)] == [11, 28]        # the authors' int(f * 576)
    assert top_k_count(1.0, 36) == 36
    assert [parse_yes_no(a) for a in ("Yes", " no.", "Yes, there is", "Maybe", "", "NO!")] == \
        ["yes", "no", "yes", "other", "other", "no"]


def test_reprompting_full_cache_reproduces_full_image_exactly(synthetic, dataset):
    session = _session(synthetic, dataset, description_tokens=6)
    images = select_images(dataset, 2, seed=0)
    questions = build_pope_questions(dataset, list(images["image_id"]), 1, seed=0)
    table = reprompting(session, images, RepromptSpec(answer_tokens=3, image_topk_positions=("after_kept", "after_prompt")),
                        questions=questions)
    assert set(table["method"]) == set(METHODS)
    full = table[table["method"] == "full_image"].set_index("question_id")
    cached = table[table["method"] == "full_cache"].set_index("question_id")
    assert (full["response"] == cached["response"]).all()
    assert (full["context_tokens"] == cached["context_tokens"]).all()
    n_image = session.adapter.grid.num_cells
    topk = table[table["method"] == "image_topk"]
    assert set(topk["k_tokens"]) == {top_k_count(f, n_image) for f in (0.02, 0.05)}
    assert (topk["context_tokens"] == topk["k_tokens"]).all()
    prompt = table[table["method"] == "prompt_cache"]["context_tokens"].iloc[0]
    both = table[table["method"] == "prompt_image_topk"]
    assert (both["context_tokens"] == prompt + both["k_tokens"]).all()
    summary = summarize_reprompting(table)
    assert {"accuracy", "f1", "yes_ratio", "context_tokens"} <= set(summary.columns)
    assert set(summary["setting"]) == {"random", "popular", "adversarial", "mean"}  # never the pooled set


def test_top_k_only_cache_continues_after_the_highest_kept_position(synthetic, dataset):
    """"after_kept" (the authors' top-k-only cache): a cache keeping the prompt's first m+1 positions
    in every layer answers exactly as the plain text prompt ids[:m+1] + question generated from
    scratch; "after_prompt" puts the question at P instead."""
    from vlminterp.interventions import reference_generate
    from vlminterp.interventions.cache import continue_batch, prefill_cache, select_cache

    session = _session(synthetic, dataset)
    item = session.encode(dataset.image_ids()[0])
    first_image = min(item.groups.image)
    kept = select_cache(prefill_cache(session.adapter, item.input_ids, **item.image_inputs), list(range(first_image)))
    question = session.tokenizer(" USER: Is there a red circle? ASSISTANT:", add_special_tokens=False,
                                 return_tensors="pt")["input_ids"]
    after_kept = kept.continuing_after_kept()
    assert (after_kept.original_length, kept.original_length) == (first_image, item.prompt_length)
    answer = continue_batch(session.adapter, after_kept, question, 8, eos_token_id=-1)[0]
    text_only = torch.cat([item.input_ids[:, :first_image], question], dim=1)
    assert answer == reference_generate(session.model, session.adapter, text_only, None, max_new_tokens=8,
                                        eos_token_id=-1)
    shifted = continue_batch(session.adapter, kept, question, 8, eos_token_id=-1)
    assert shifted[0] != answer  # the position matters to the answer


def test_top_image_positions_follow_the_received_attention():
    from vlminterp.experiments.kaduri.reprompt import top_image_positions

    received = [torch.tensor([[0.1, 0.5, 0.2, 0.5]]), torch.tensor([[0.9, 0.0, 0.3, 0.1]])]
    assert top_image_positions(received, (10, 11, 12, 13), 2) == [[11, 13], [10, 12]]


# ---- plots -----------------------------------------------------------------------------------------
def test_plots_write_png_and_pdf(synthetic, dataset, tmp_path):
    from vlminterp.plots import kaduri as plots

    session = _session(synthetic, dataset, description_tokens=4)
    images = select_images(dataset, 2, seed=0)
    k1 = summarize_attention_fractions(attention_fractions(session, images, AttentionFractionSpec()))
    k2 = summarize_knockouts(group_knockouts(session, images, KnockoutSpec()), require_reference=False)
    questions = build_pope_questions(dataset, list(images["image_id"]), 1, seed=0)
    k4 = summarize_reprompting(reprompting(session, images, RepromptSpec(answer_tokens=2), questions=questions))
    layers = pd.DataFrame({"band": [0, 1], "layer_start": [0, 1], "layer_end": [0, 1], "accuracy": [0.5, 0.7],
                           "low": [0.3, 0.5], "high": [0.7, 0.9], "chance": [0.2, 0.2], "n_mentions": [10, 10]})
    written = [*plots.plot_attention_fractions(k1, tmp_path / "k1"),
               *plots.plot_knockout_conditions(k2, tmp_path / "k2c", chance_recall=0.3),
               *plots.plot_knockout_start_layer(k2, tmp_path / "k2s"),
               *plots.plot_knockout_windows(k2, tmp_path / "k2w"),
               *plots.plot_localization(layers, layers, tmp_path / "k3"),
               *plots.plot_reprompting(k4, tmp_path / "k4")]
    assert all(p.stat().st_size > 0 for p in written) and len(written) == 12


def test_localization_plot_without_any_object_mention(tmp_path):
    """A run whose descriptions name no object (random weights) summarises to an empty table; the
    figure says so instead of failing (found by the GPU smoke run's tiny CPU version)."""
    from vlminterp.plots import kaduri as plots

    empty = pd.DataFrame(columns=["image_id", "mention", "layer", "head", "hit", "chance"])
    per_layer = summarize_localization(empty)
    per_band = summarize_localization(empty, band_width=2)
    assert per_layer.empty and per_band.empty
    written = plots.plot_localization(per_layer, per_band, tmp_path / "k3")
    assert len(written) == 2 and all(p.stat().st_size > 0 for p in written)
