"""Tests of the model organism: processor and model round trips, task mix, training, evaluation."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from oomfixtures import out_of_memory_above
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from vlminterp.data.shapes import ShapesWorldSpec, generate_world
from vlminterp.organism import (
    TASKS,
    OrganismSpec,
    build_model,
    evaluate_organism,
    load_scenes,
    num_image_tokens,
    summarize_evaluation,
    task_examples,
    train_organism,
    vocabulary_words,
)
from vlminterp.organism.evaluate import score_answer
from vlminterp.organism.train import (
    IGNORE_INDEX,
    answer_loss,
    prepare_training_data,
    train_tokenizer,
    training_documents,
    training_scenes,
)
from vlminterp.scoring.mentions import MentionMatcher

WORLD = ShapesWorldSpec.tiny()
PROMPT = "USER: <image>\nWhat shape is the red object? ASSISTANT: It is a"


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_world")
    generate_world(WORLD, out)
    return out


@pytest.fixture(scope="module")
def documents(world_dir) -> list[str]:
    spec = OrganismSpec.tiny()
    return training_documents(world_dir, training_scenes(world_dir, spec), WORLD.shapes, spec.seed)


@pytest.fixture(scope="module")
def processor(documents):
    """The organism's processor: a SentencePiece tokenizer trained on the tiny world's text."""
    return train_tokenizer(documents, OrganismSpec.tiny(), WORLD.image_size, WORLD.shapes, "It is a")


def _untrained_model(processor, spec: OrganismSpec | None = None) -> LlavaForConditionalGeneration:
    tok = processor.tokenizer
    return build_model(spec or OrganismSpec.tiny(), vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       image_size=WORLD.image_size).eval()


def _images(world_dir: Path, n: int) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted((world_dir / "images" / "val").glob("*.png"))[:n]]


# --- tokenizer and processor -------------------------------------------------------------------

def test_subword_tokenizer_is_the_sentencepiece_model_trained_on_the_worlds_text(documents, processor):
    """The HF tokenizer encodes as sentencepiece itself does with the model trained on the world's
    text; names split into several pieces; training is deterministic; any ASCII prompt encodes."""
    import sentencepiece

    from vlminterp.organism.tokenizer import name_pieces, train_sentencepiece

    spec = OrganismSpec.tiny()
    model = train_sentencepiece(documents, spec.tokenizer_vocab_size, spec.tokenizer_max_piece_length)
    assert model == train_sentencepiece(documents, spec.tokenizer_vocab_size, spec.tokenizer_max_piece_length)
    reference = sentencepiece.SentencePieceProcessor(model_proto=model)
    tok = processor.tokenizer
    for text in (documents[0], documents[-1], "There is a red circle, a blue square and a yellow cross.",
                 "A chat between a curious human and an artificial intelligence assistant."):
        ids = tok(text)["input_ids"]
        assert ids == [tok.bos_token_id] + reference.encode(text), text
        assert tok.decode(ids, skip_special_tokens=True) == text and tok.unk_token_id not in ids
    pieces = {name: name_pieces(tok, name) for name in WORLD.shapes + WORLD.colors}
    assert any(len(pieces[s]) > 1 for s in WORLD.shapes) and any(len(pieces[c]) > 1 for c in WORLD.colors), pieces
    assert all(len(p[0]) <= spec.tokenizer_max_piece_length for p in pieces.values())
    assert len({p[0] for s, p in pieces.items() if s in WORLD.shapes}) == len(WORLD.shapes)  # distinct first pieces
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)  # Llama's layout
    assert tok.convert_tokens_to_ids(["<image>", "<pad>"]) == [len(tok) - 2, len(tok) - 1]  # appended, as LLaVA's
    assert tok.convert_ids_to_tokens(tok("<image>\nWhat", add_special_tokens=False)["input_ids"])[:2] == \
        ["<image>", "\n"]  # the newline of every prompt is a piece of its own


def test_shapes_sharing_a_first_piece_are_refused(documents):
    with pytest.raises(ValueError, match="tokenizer_max_piece_length"):
        train_tokenizer(documents, OrganismSpec.tiny(tokenizer_max_piece_length=2), WORLD.image_size, WORLD.shapes,
                        "It is a")


def test_word_vocabulary_default_layout_and_a_checkpoints_layout():
    from vlminterp.organism.tokenizer import SPECIAL_TOKENS, build_tokenizer, word_vocabulary

    words = vocabulary_words(WORLD.shapes, WORLD.colors)
    default = word_vocabulary(words)
    assert list(default) == list(dict.fromkeys([*SPECIAL_TOKENS, *words]))  # the organism's layout
    assert list(default.values()) == list(range(len(default)))
    llava = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 32000, "<pad>": 32001}
    tok = build_tokenizer(words, special_ids=llava, vocab_size=32064)
    assert len(tok) == 32064 and sorted(tok.get_vocab().values()) == list(range(32064))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 32001)
    assert tok.convert_tokens_to_ids("<image>") == 32000
    assert tok.convert_tokens_to_ids("USER") == 3  # words take the lowest free ids
    ids = tok("Is there a circle in this image?")["input_ids"]
    assert ids[0] == 1 and tok.unk_token_id not in ids and max(ids) < len(words) + 3
    assert tok("<unused7>", add_special_tokens=False)["input_ids"] != [7]  # placeholders never come from text
    with pytest.raises(ValueError, match="vocab_size"):
        word_vocabulary(words, special_ids=llava, vocab_size=100)
    with pytest.raises(ValueError, match="special_ids"):
        word_vocabulary(words, special_ids={"<unk>": 0})


def test_processor_save_load_round_trip(processor, world_dir, tmp_path):
    images = _images(world_dir, 2)
    texts = [PROMPT, "USER: <image>\nDescribe this image. ASSISTANT:"]
    before = processor(images=images, text=texts, padding=True, return_tensors="pt")
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    after = loaded(images=images, text=texts, padding=True, return_tensors="pt")
    assert set(before) == set(after)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    image_id = loaded.tokenizer.convert_tokens_to_ids("<image>")
    assert ((after["input_ids"] == image_id).sum(dim=1) == num_image_tokens(WORLD.image_size, 16)).all()
    assert loaded.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
        add_generation_prompt=True, tokenize=False) == "USER: <image>\nDescribe this image. ASSISTANT:"


def test_image_token_count_matches_vision_features(processor, world_dir):
    model = _untrained_model(processor)
    inputs = processor(images=_images(world_dir, 1), text=[PROMPT], return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    n_placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert features[0].shape == (n_placeholders, model.config.text_config.hidden_size)
    assert n_placeholders == model.config.image_seq_length == (WORLD.image_size // 16) ** 2


def test_model_save_load_round_trip_and_generate(processor, world_dir, tmp_path):
    model = _untrained_model(processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    inputs = loaded_processor(images=_images(world_dir, 2), text=[PROMPT, "USER: <image>\nDescribe this image. ASSISTANT:"],
                              padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
        output = loaded.generate(**inputs, max_new_tokens=3, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert output.shape[0] == 2 and prompt_length < output.shape[1] <= prompt_length + 3
    assert torch.equal(output[:, :prompt_length], inputs["input_ids"])


# --- task mix ----------------------------------------------------------------------------------

def test_task_mix_matches_annotations(world_dir):
    instances = json.loads((world_dir / "annotations" / "instances_train.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    scenes = load_scenes(world_dir, "train")
    assert len(scenes) == WORLD.n_train
    answers = Counter()
    for scene in scenes:
        truth = [(names[a["category_id"]], a["attributes"]["color"]) for a in instances["annotations"]
                 if a["image_id"] == scene.image_id]
        assert [(o.shape, o.color) for o in scene.objects] == truth
        examples = task_examples(scene, WORLD.shapes, seed=0)
        by_task = {t: [e for e in examples if e.task == t] for t in TASKS}
        [describe] = by_task["describe"]
        positions = [describe.answer.index(f"{color} {shape}") for shape, color in truth]
        assert positions == sorted(positions), "describe must follow reading order"
        polled = {e.target_shape: e.answer for e in by_task["polling"]}
        n = min(len(truth), len(WORLD.shapes) - len(truth))
        assert Counter(polled.values()) == Counter({"Yes": n, "No": n}) - Counter()
        assert all((shape in scene.shapes) == (answer == "Yes") for shape, answer in polled.items())
        answers.update(polled.values())
        assert sorted((e.target_shape, e.answer) for e in by_task["color"]) == sorted(truth)
        assert sorted((e.answer, e.target_color) for e in by_task["shape"]) == sorted(
            (f"It is a {s}.", c) for s, c in truth)
    assert answers["Yes"] == answers["No"] > 0


def test_text_documents_put_a_caption_in_place_of_the_image(world_dir):
    from vlminterp.organism.tasks import load_captions, text_documents

    raw = json.loads((world_dir / "annotations" / "captions_train.json").read_text())["annotations"]
    scene = load_scenes(world_dir, "train")[1]
    captions = [a["caption"] for a in sorted(raw, key=lambda a: a["id"]) if a["image_id"] == scene.image_id]
    assert load_captions(world_dir, "train")[scene.image_id] == captions and len(captions) == 2
    documents = text_documents(scene, captions, WORLD.shapes, seed=0)
    examples = task_examples(scene, WORLD.shapes, seed=0)
    assert documents[:2] == captions and len(documents) == 2 + len(examples)
    for k, (document, example) in enumerate(zip(documents[2:], examples)):
        assert document == f"USER: {captions[k % 2]}\n{example.question} ASSISTANT: {example.answer}"
    with pytest.raises(ValueError, match="no caption"):
        text_documents(scene, [], WORLD.shapes, seed=0)


def test_task_examples_are_deterministic_per_seed(world_dir):
    scene = load_scenes(world_dir, "val")[0]
    assert task_examples(scene, WORLD.shapes, seed=3) == task_examples(scene, WORLD.shapes, seed=3)


def test_training_data_labels_only_answer_tokens(processor, world_dir):
    spec = OrganismSpec.tiny(max_train_images=20)
    scenes = training_scenes(world_dir, spec)
    documents = training_documents(world_dir, scenes, WORLD.shapes, spec.seed)
    data = prepare_training_data(processor, world_dir, spec, WORLD.shapes, WORLD.colors, documents)
    tok = processor.tokenizer
    assert scenes == load_scenes(world_dir, "train")[:20]
    expected = [e for s in scenes for e in task_examples(s, WORLD.shapes, seed=spec.seed)]
    examples = data.examples
    assert len(expected) == len(examples.input_ids)
    for i in (0, 1, len(expected) - 1):
        labelled = examples.labels[i][examples.labels[i] != IGNORE_INDEX].tolist()
        assert tok.decode(labelled[:-1]) == expected[i].answer
        assert labelled[-1] == tok.eos_token_id
        prompt = tok.decode(examples.input_ids[i][: examples.lengths[i]].tolist(), skip_special_tokens=True)
        assert prompt.startswith("USER") and expected[i].question.split()[0] in prompt
    # Text documents: no image, the loss on every token after <s>, </s> included.
    text = data.documents
    assert len(text.input_ids) == len(documents) and not (text.input_ids == tok.convert_tokens_to_ids("<image>")).any()
    for i in (0, len(documents) - 1):
        n = int(text.lengths[i])
        assert text.labels[i, 0] == IGNORE_INDEX and torch.equal(text.labels[i, 1:n], text.input_ids[i, 1:n])
        assert tok.decode(text.input_ids[i, :n - 1].tolist(), skip_special_tokens=True) == documents[i]
        assert int(text.input_ids[i, n - 1]) == tok.eos_token_id
    # Processed pixels equal what the processor gives for the same image.
    ref = processor.image_processor(images=[Image.open(scenes[0].path).convert("RGB")], return_tensors="pt")
    assert torch.equal(ref["pixel_values"][0], data.pixel_values[0])
    # Patch labels: a patch is labelled with a shape iff an object covers it.
    n_objects = np.array([len(s.objects) for s in scenes])
    labelled_patches = (data.patch_shape > 0).sum(dim=1).numpy()
    assert (labelled_patches >= n_objects).all() and (labelled_patches <= 4 * n_objects).all()
    assert torch.equal(data.patch_shape > 0, data.patch_color > 0)


def test_planted_answer_start_is_where_the_loss_starts(processor, world_dir):
    """A planted routing's inference layout (after the first answer marker) is its training layout
    (where the loss starts), for every example of every task."""
    from vlminterp.organism.train import answer_marker_ids
    from vlminterp.models.routing import RoutingConstraint

    spec = OrganismSpec.tiny(max_train_images=10)
    scenes = training_scenes(world_dir, spec)
    documents = training_documents(world_dir, scenes, WORLD.shapes, spec.seed)
    data = prepare_training_data(processor, world_dir, spec, WORLD.shapes, WORLD.colors, documents)
    tok = processor.tokenizer
    marker = answer_marker_ids(tok)
    assert tok.decode(list(marker)).strip() == "ASSISTANT:"
    constraint = RoutingConstraint("query_routed", (), tok.convert_tokens_to_ids("<image>"), 2, marker)
    examples = data.examples
    loss_starts = (examples.labels != IGNORE_INDEX).int().argmax(dim=1)
    assert torch.equal(constraint.answer_starts(examples.input_ids), loss_starts)


@pytest.mark.parametrize("stage", ["text", "align", "instruct"])
def test_each_stage_trains_only_its_modules(processor, world_dir, stage):
    """text: the language model; align: the projector; instruct: projector + language model.
    The tower is frozen after stage 0 (tower_lr_scale=0)."""
    from vlminterp.organism.train import sequence_stages, train_sequences

    spec = OrganismSpec.tiny(text_steps=2, align_steps=2, language_steps=2, max_train_images=12, warmup_steps=0)
    scenes = training_scenes(world_dir, spec)
    data = prepare_training_data(processor, world_dir, spec, WORLD.shapes, WORLD.colors,
                                 training_documents(world_dir, scenes, WORLD.shapes, spec.seed))
    model = _untrained_model(processor, spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    [chosen] = [s for s in sequence_stages(spec) if s.name == stage]
    rows = train_sequences(model, data, spec, chosen, torch.Generator().manual_seed(0))
    assert {r["stage"] for r in rows} == {stage} and all(np.isfinite(r["loss"]) for r in rows)
    changed = {k.split(".")[1] if k.startswith("model.") else k.split(".")[0]
               for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    expected = {"text": {"language_model", "lm_head"}, "align": {"multi_modal_projector"},
                "instruct": {"language_model", "lm_head", "multi_modal_projector"}}[stage]
    assert changed == expected
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again for the next stage


@pytest.mark.parametrize("stage", ["align", "instruct"])
def test_a_planted_constraint_is_applied_in_training(processor, world_dir, stage, monkeypatch):
    """Every attention call of an image stage sees the query_routed constraint with the batch's own
    layout (answer from the loss start); a training loop that dropped it (no layout: nothing
    blocked) fails here."""
    from vlminterp.organism.train import sequence_stages, train_sequences
    from vlminterp.models.routing import RoutingConstraint

    spec = OrganismSpec.tiny(routing="query_routed", align_steps=2, language_steps=2, max_train_images=12,
                             warmup_steps=0)
    scenes = training_scenes(world_dir, spec)
    data = prepare_training_data(processor, world_dir, spec, WORLD.shapes, WORLD.colors,
                                 training_documents(world_dir, scenes, WORLD.shapes, spec.seed))
    model = _untrained_model(processor, spec)
    calls = []
    real = RoutingConstraint.blocked

    def spy(self, layer, q_slots, num_keys, batch):
        blocked = real(self, layer, q_slots, num_keys, batch)
        calls.append((self.pinned, blocked is not None and bool(blocked.any()), self.layout))
        return blocked

    monkeypatch.setattr(RoutingConstraint, "blocked", spy)
    [chosen] = [s for s in sequence_stages(spec) if s.name == stage]
    train_sequences(model, data, spec, chosen, torch.Generator().manual_seed(0))
    assert len(calls) == 2 * spec.text_layers  # two steps, every layer
    for pinned, blocked, layout in calls:
        assert pinned and blocked
        image_slots = layout.image.sum(dim=1)
        assert (image_slots == image_slots[0]).all() and image_slots[0] > 0
        assert (layout.answer_start > image_slots.max()).all()  # the answer comes after the image


def test_answer_loss_ignores_unlabelled_positions():
    logits = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 3], labels[1, 4] = 2, 6
    loss = answer_loss(logits, labels)
    expected = torch.stack([-logits[0, 2].log_softmax(-1)[2], -logits[1, 3].log_softmax(-1)[6]])
    assert torch.allclose(loss, expected)


def test_score_answer_rules():
    from vlminterp.organism.tasks import TaskExample

    matcher = MentionMatcher({s: [s] for s in WORLD.shapes})
    polling = TaskExample(1, "polling", "Is there a circle in this image?", "Yes", "circle")
    assert score_answer(polling, "Yes", matcher) == (True, True)
    assert score_answer(polling, "yes, there is", matcher) == (True, False)
    assert score_answer(polling, "", matcher) == (False, False)
    shape = TaskExample(1, "shape", "What shape is the red object?", "It is a circle.", "circle", "red")
    assert score_answer(shape, "It is a circle.", matcher) == (True, True)
    assert score_answer(shape, "It is a square, not a circle.", matcher) == (False, False)


def test_evaluation_out_of_memory_halves_the_batch_with_the_same_answers(processor, world_dir, tmp_path, monkeypatch):
    import vlminterp.organism.evaluate as evaluate

    model = _untrained_model(processor)
    monkeypatch.setattr(evaluate, "load_organism", lambda model_dir: (model, processor))
    clean = evaluate_organism(tmp_path, world_dir, split="val", max_images=3, batch_size=8)
    assert set(clean["batch_size"]) == {8} and set(clean["oom_retries"]) == {0}
    with out_of_memory_above(model.model.language_model, 2) as oom:
        table = evaluate_organism(tmp_path, world_dir, split="val", max_images=3, batch_size=8)
    assert oom.raised > 0 and oom.largest_run <= 2
    batching = ["batch_size", "oom_retries"]
    pd.testing.assert_frame_equal(table.drop(columns=batching), clean.drop(columns=batching),
                                  check_exact=False, rtol=1e-4)
    assert (table["batch_size"] <= 2).all()
    assert table.groupby("task", sort=False)["oom_retries"].first().tolist()[0] >= 1  # describe: halved
    assert set(table.loc[table["task"] != "describe", "oom_retries"]) == {0}  # the smaller size stayed


# --- spec --------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("vision_heads", 3), ("language_lr", 0.0), ("task_weights", (("jokes", 1.0),)),
                                          ("vision_steps", -1), ("max_train_images", 0)])
def test_spec_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        OrganismSpec(**{field: value})


def test_spec_json_round_trip():
    spec = OrganismSpec.tiny(task_weights=(("describe", 2.0), ("polling", 1.0)))
    assert OrganismSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_world_with_wrong_patch_size_is_rejected(world_dir, tmp_path):
    with pytest.raises(ValueError, match="patch_size"):
        train_organism(OrganismSpec.tiny(patch_size=24), world_dir, tmp_path / "model")


# --- training ----------------------------------------------------------------------------------

def test_training_is_deterministic_for_a_seed(world_dir, tmp_path):
    spec = OrganismSpec.tiny(vision_steps=3, text_steps=3, align_steps=3, language_steps=3, max_train_images=40,
                             log_every=1)
    first = train_organism(spec, world_dir, tmp_path / "a")
    second = train_organism(spec, world_dir, tmp_path / "b")
    pd.testing.assert_frame_equal(first, second)
    a = LlavaForConditionalGeneration.from_pretrained(tmp_path / "a").state_dict()
    b = LlavaForConditionalGeneration.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = train_organism(OrganismSpec.tiny(vision_steps=3, text_steps=3, align_steps=3, language_steps=3,
                                             max_train_images=40, seed=1), world_dir, tmp_path / "c")
    c = LlavaForConditionalGeneration.from_pretrained(tmp_path / "c").state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert not list(tmp_path.glob(".*tmp*")), "atomic model dir left a temporary behind"


RESUME_SPEC = OrganismSpec.tiny(vision_steps=8, text_steps=8, align_steps=8, language_steps=8, max_train_images=40,
                                log_every=1)  # with a checkpoint every 3 steps: 2 per stage


@pytest.fixture(scope="module")
def uninterrupted(world_dir, tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    model_dir = tmp_path_factory.mktemp("uninterrupted") / "model"
    return train_organism(RESUME_SPEC, world_dir, model_dir), model_dir


@pytest.mark.parametrize("stop_after_saves, stage", [(1, "vision"), (3, "text"), (7, "instruct")])
def test_training_resumes_from_its_checkpoint_with_the_same_weights(world_dir, tmp_path, monkeypatch, uninterrupted,
                                                                   stop_after_saves, stage):
    """A run stopped after its n-th checkpoint (as kill -9 would stop it: nothing cleaned up)
    resumes from there and ends with the weights and losses of an uninterrupted run.
    (The real kill -9 of the Snakemake job: tests/workflow/test_resume.py.)"""
    from vlminterp.organism import train as training

    spec = RESUME_SPEC
    expected, expected_dir = uninterrupted
    real_save, saves = training.TrainingCheckpoint.save, []

    class Killed(BaseException):
        pass

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        saves.append(args[0])
        if len(saves) == stop_after_saves:
            raise Killed

    checkpoints = tmp_path / ".model.checkpoint"
    with monkeypatch.context() as patch:
        patch.setattr(training.TrainingCheckpoint, "__init__", _checkpoint_every_3(training))
        patch.setattr(training.TrainingCheckpoint, "save", save_then_die)
        with pytest.raises(Killed):
            train_organism(spec, world_dir, tmp_path / "model", checkpoint_dir=checkpoints)
    assert saves[-1] == stage
    assert not (tmp_path / "model").exists() and (checkpoints / "checkpoint.pt").is_file()
    with monkeypatch.context() as patch:
        patch.setattr(training.TrainingCheckpoint, "__init__", _checkpoint_every_3(training))
        resumed = train_organism(spec, world_dir, tmp_path / "model", checkpoint_dir=checkpoints)
    pd.testing.assert_frame_equal(resumed, expected)
    a = LlavaForConditionalGeneration.from_pretrained(expected_dir).state_dict()
    b = LlavaForConditionalGeneration.from_pretrained(tmp_path / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "model" / "timings.json").read_text())["seconds"]["resumed_from"]
    assert not checkpoints.exists(), "the checkpoint outlived the finished model"


def _checkpoint_every_3(training):
    real_init = training.TrainingCheckpoint.__init__

    def init(self, directory, fingerprint, every=3):
        real_init(self, directory, fingerprint, every=3)
    return init


def test_cached_frozen_tower_features_give_the_models_own_logits():
    """Stage 2's shortcut (tower features computed once, projector + LM per step) equals a plain
    forward with pixel values."""
    from vlminterp.organism.train import _embeds_with_image_features, _frozen_tower_features
    from vlminterp.testing.synthetic import build_synthetic

    model, processor = build_synthetic("tiny-llama")
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8))
              for i in range(2)]
    batch = processor(images=images, text=["USER: <image>\nwhat ASSISTANT:"] * 2, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
        features = _frozen_tower_features(model, batch["pixel_values"])
        embeds = _embeds_with_image_features(model, batch["input_ids"], features)
        got = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def _first_piece_by_sentencepiece(tokenizer, prefix: str, form: str) -> str:
    """The piece `form` adds after `prefix`, from the token strings (not `answer_first_token`)."""
    base = tokenizer.tokenize(prefix)
    full = tokenizer.tokenize(f"{prefix} {form}")
    at = next(i for i, (a, b) in enumerate(zip(base + [None], full)) if a != b)
    return full[at]


def test_first_pieces_of_the_shapes_vocabulary_credit_no_shared_piece(processor):
    """On the organism's tokenizer, a first piece that begins a form (name, synonym or plural) of
    two shapes credits neither: counted here from every form's token strings."""
    from helpers import name_token_ids
    from vlminterp.scoring.mentions import plural_forms
    from vlminterp.scoring.pieces import first_pieces
    from vlminterp.scoring.vocabulary import load_vocabulary

    tok = processor.tokenizer
    shapes = load_vocabulary("shapes")
    owners: dict[str, set[str]] = {}
    for category, forms in shapes.categories.items():
        for form in {*forms, *(p for f in forms for p in plural_forms(f))}:
            owners.setdefault(_first_piece_by_sentencepiece(tok, "It is a", form), set()).add(category)
    shared = {piece for piece, cats in owners.items() if len(cats) > 1}
    assert shared, owners  # the organism's pieces do collide (e.g. "disc" and "diamond" both start "▁d")
    pieces = first_pieces(tok, shapes, "It is a")
    assert {tok.convert_ids_to_tokens(p) for p in pieces.shared} == shared
    for category in shapes.categories:
        expected = {p for p, cats in owners.items() if cats == {category} and p.strip("▁")}  # "▁" names nothing
        assert {tok.convert_ids_to_tokens(p) for p in pieces.credits[category]} == expected, category
        assert {tok.convert_ids_to_tokens(p) for p in name_token_ids(tok, shapes, category, "It is a")} == expected


@pytest.mark.slow
def test_tiny_query_routed_organism_learns_under_its_constraint(world_dir, tmp_path):
    """A tiny planted organism (issue #24): trained under the query_routed constraint, saved and loaded
    with it, it still answers from the image (above chance: the image reaches the answer through
    the prompt), and the engine shows the constraint: hiding the image from the generated tokens is
    an exact no-op, hiding it from the query and generated tokens changes the answers.

    300 instruction steps, not the preset's 600: held-out colour / shape accuracy on seed 0 (40 val
    images; the bar is 0.55) was 0.51 / 0.57 at 200 steps, 0.68 / 0.66 at 250, 0.81 / 0.90 at 300,
    0.99 / 0.95 at 400; fewer text (50, 75) or alignment (30) steps cost more than they save (shape
    0.24 to 0.48 at 300). Hiding the image from the query changed all 4 descriptions at every count."""
    from vlminterp.interventions import From, InterventionEngine, Knockout
    from vlminterp.models.adapters import adapter_for
    from vlminterp.models.loading import ModelSpec, load_model
    from vlminterp.models.routing import constraint_of

    spec = OrganismSpec.tiny(routing="query_routed", language_steps=300)
    train_organism(spec, world_dir, tmp_path / "model")
    model, processor = load_model(ModelSpec(str(tmp_path / "model")))
    constraint = constraint_of(model)
    assert constraint.routing == "query_routed" and processor.tokenizer.decode(list(constraint.answer_marker)).strip() == "ASSISTANT:"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = evaluate_organism(tmp_path / "model", world_dir, split="val", max_images=40, batch_size=32)
        accuracy = summarize_evaluation(table).set_index("task")["accuracy"]
        assert accuracy["color"] > 1 / len(WORLD.colors) + 0.3 and accuracy["shape"] > 1 / len(WORLD.shapes) + 0.3, accuracy.to_dict()
        adapter = adapter_for(model, processor)
        engine = InterventionEngine(model, adapter)
        changed = 0
        for image in _images(world_dir, 4):
            encoding = processor(images=image, text="USER: <image>\nDescribe this image. ASSISTANT:", return_tensors="pt")
            ids = encoding["input_ids"]
            image_positions = adapter.image_positions(ids)[0]
            length = ids.shape[1]
            out = engine.generate(engine.prepare(ids, encoding["pixel_values"]),
                                  [None, Knockout(From(length), image_positions),
                                   Knockout(From(0), image_positions)], max_new_tokens=16)
            assert out.tokens[1] == out.tokens[0]  # the planted constraint already blocks these edges
            changed += out.tokens[2] != out.tokens[0]
        assert changed >= 1
    finally:
        torch.set_num_threads(threads)
