"""Generation stops at EVERY end-of-sequence id of a model: the text config's and the checkpoint's
generation_config.json (LLaVA-Phi-3 ends its turn with `<|end|>`, listed only there).

A tiny LLaVA gets a second EOS id in its generation config: a token the model first emits at a
middle step of its free-running greedy answer. The engine, the reference, cache re-prompting, N1's
generative setting, K2's descriptions and the organism evaluation must all stop there, and the
text after it must not be scored.
"""
from __future__ import annotations

import copy

import pytest
import torch
from helpers import continuation_ids, encode

from vlminterp.data.coco import CocoDataset, SelectionSpec, select_targets
from vlminterp.data.shapes import ShapesWorldSpec, generate_world
from vlminterp.experiments.kaduri.knockout import KnockoutSpec, image_knockouts
from vlminterp.experiments.neo.ablation import AblationSpec, run_token_ablation
from vlminterp.experiments.neo.prompts import PromptSpec
from vlminterp.experiments.shared.session import DescribePrompt, Session
from vlminterp.experiments.shared.cells import CellSpec, cells_by_image, map_object_cells
from vlminterp.interventions import InterventionEngine, reference_generate
from vlminterp.interventions.cache import continue_generation, prefill_cache, select_cache
from vlminterp.interventions.engine import until_eos
from vlminterp.models.adapters import adapter_for
from vlminterp.models.adapters.config_values import token_ids
from vlminterp.models.loading import ModelSpec, load_model
from vlminterp.testing.synthetic import save_synthetic
from vlminterp.scoring.vocabulary import load_vocabulary

NEW_TOKENS = 8


def with_second_eos(model, processor, free_running: list[int]):
    """(a copy of `model` whose generation config adds a second EOS id, its adapter, the expected
    answer): the id is the first token of `free_running` after step 0 not emitted before."""
    stop = next(s for s in range(1, len(free_running) - 1) if free_running[s] not in free_running[:s])
    copied = copy.deepcopy(model)
    copied.generation_config.eos_token_id = [model.config.text_config.eos_token_id, free_running[stop]]
    return copied, adapter_for(copied, processor), free_running[: stop + 1]


def test_token_ids_merge_ints_and_lists_in_order():
    assert token_ids(2, [7, 2], None, 9) == (2, 7, 9)
    assert token_ids(None) == ()
    assert until_eos([5, 9, 7, 9], [9, 7]) == [5, 9]
    assert until_eos([5, 6], [9]) == [5, 6]


def test_adapter_reads_the_checkpoints_generation_config(synthetic, tmp_path):
    model, processor, adapter = synthetic("tiny-phi3")
    text_eos = adapter.text_config.eos_token_id
    assert adapter.eos_token_ids == (text_eos,)
    copied = copy.deepcopy(model)
    copied.generation_config.eos_token_id = [text_eos, 7]  # as xtuner/llava-phi-3-mini-hf: [</s>, <|end|>]
    save_synthetic(copied, processor, tmp_path)
    loaded, loaded_processor = load_model(ModelSpec(str(tmp_path)))
    assert adapter_for(loaded, loaded_processor).eos_token_ids == (text_eos, 7)


def test_engine_reference_and_cache_stop_at_the_second_eos(synthetic, make_inputs):
    model, processor, adapter = synthetic("tiny-llama")
    inputs = make_inputs(processor, adapter)
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    engine = InterventionEngine(model, adapter)
    free = engine.generate(engine.prepare(ids, pixels), [None], NEW_TOKENS, eos_token_id=-1).tokens[0]
    assert len(free) == NEW_TOKENS
    stopping, stopping_adapter, expected = with_second_eos(model, processor, free)
    engine = InterventionEngine(stopping, stopping_adapter)
    assert engine.generate(engine.prepare(ids, pixels), [None, None], NEW_TOKENS).tokens == [expected, expected]
    assert reference_generate(stopping, stopping_adapter, ids, pixels, None, NEW_TOKENS) == expected
    # K4's cache re-prompting: the same prompt as a kept cache + an empty-ish continuation
    question = continuation_ids(processor, " Describe.")
    cache = prefill_cache(stopping_adapter, ids, pixels)
    answer = continue_generation(stopping_adapter, select_cache(cache, range(ids.shape[1])), question, NEW_TOKENS)
    free_answer = continue_generation(adapter, select_cache(cache, range(ids.shape[1])), question, NEW_TOKENS,
                                      eos_token_id=-1)
    assert answer == until_eos(free_answer, stopping_adapter.eos_token_ids)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eos_world")
    generate_world(ShapesWorldSpec(image_size=24, cell_size=6, n_train=2, n_val=3, margin=1,
                                   shapes=("circle", "square", "triangle"), colors=("red", "green", "blue")), root)
    return root


def test_n1_generative_answers_end_at_the_second_eos(synthetic, world):
    model, processor, adapter = synthetic("tiny-llama")
    dataset = CocoDataset.load(world, "val")
    selection = select_targets(dataset, SelectionSpec(split="val", target_area_range=(0, 1e9),
                                                      exclude_crowd_targets=False, max_images=1))
    image_id = int(selection["image_id"].iloc[0])
    prompts, cells = PromptSpec(), CellSpec()
    free_session = Session.from_model(model, processor, dataset, DescribePrompt(geometry=cells.geometry))
    prepared = free_session.prepare(dataset.load_image(image_id), prompts.describe)
    free = free_session.engine.generate(prepared, [None], NEW_TOKENS, eos_token_id=-1).tokens[0]
    stopping, stopping_adapter, expected = with_second_eos(model, processor, free)
    grids = cells_by_image(map_object_cells(dataset, selection, stopping_adapter, cells))
    vocabulary = load_vocabulary("shapes", categories=list(dataset.category_names().values()))
    spec = AblationSpec(settings=("generative",), description_tokens=NEW_TOKENS, ig_steps=2, ig_batch_size=2,
                        random_counts=(2,))
    session = Session.from_model(stopping, processor, dataset, DescribePrompt(geometry=cells.geometry),
                                 vocabulary=vocabulary)
    table = run_token_ablation(session, selection, spec, cells=grids, prompts=prompts,
                               mean=torch.zeros(adapter.hidden_size))
    answer = table.set_index("condition").loc["none", "answer"]
    decode = lambda tokens: processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()  # noqa: E731
    assert answer == decode(expected) != decode(free)


def test_k2_descriptions_end_at_the_second_eos(synthetic, world):
    model, processor, _ = synthetic("tiny-llama")
    dataset = CocoDataset.load(world, "val")
    image_id = dataset.image_ids()[0]
    session = Session.from_model(model, processor, dataset, DescribePrompt(description_tokens=NEW_TOKENS))
    item = session.encode(image_id)
    free = session.engine.generate(item.prepared, [None], NEW_TOKENS, eos_token_id=-1).tokens[0]
    stopping, _, expected = with_second_eos(model, processor, free)
    session = Session.from_model(stopping, processor, dataset, DescribePrompt(description_tokens=NEW_TOKENS))
    rows = image_knockouts(session, image_id, KnockoutSpec())
    clean = next(row for row in rows if row["condition"] == "none")
    assert clean["n_generated"] == len(expected) < len(free)
    assert clean["description"] == session.decode(expected) != session.decode(free)
    assert session.describe(session.encode(image_id)) == expected
