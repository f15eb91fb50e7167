"""Evaluate a trained organism on held-out images of its world with greedy decoding.

    from vlminterp.organism import evaluate_organism, summarize_evaluation
    table = evaluate_organism(Path("results/organism"), Path("data/shapes"), split="val")
    summarize_evaluation(table)       # one row per task: n, accuracy, strict_accuracy, 95% CI, chance

The table has one row per image x task (x object where the task is about one object) with the
prompt, the generated answer, the expected answer and two flags:

- describe (one row per object): ``correct`` = the shape is mentioned (word-boundary match,
  ``scoring.mentions``); ``correct_strict`` = "<colour> <shape>" appears; ``hallucinated`` =
  number of shapes mentioned that are not in the image (same on each row of an image).
- polling: ``correct`` = the answer's first word is yes/no as expected (case-insensitive);
  strict = exactly "Yes"/"No".
- color: first word is the colour; strict = the whole answer is the colour.
- shape: the first shape mentioned is the target; strict = exactly "It is a <shape>.".
- shape_vqa (Neo et al.'s VQA readout): prompt + " It is a", one forward pass; correct = the
  top-1 next token is the shape name's first sub-token (``generated`` holds the top-1 token,
  ``target_probability`` the probability of the name's first sub-token).

Prompts run ``batch_size`` at a time; CUDA out-of-memory halves the batch and redoes it
(``vlminterp.batching``): ``batch_size`` and ``oom_retries`` on each row are the batch size in
effect when its task was done and how many times memory ran out during that task.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from vlminterp.batching import BATCH_COLUMNS, AdaptiveBatch
from vlminterp.data.shapes import load_world_spec
from vlminterp.models.adapters import adapter_for
from vlminterp.organism.tasks import VQA_ANSWER_PREFIX, TaskExample, load_scenes, task_examples
from vlminterp.scoring.mentions import MentionMatcher
from vlminterp.stats import wilson_interval

EVALUATION_SEED = 12345  # draws the absent shapes of polling questions; fixed so every model sees the same set
EVAL_TASKS: tuple[str, ...] = ("describe", "polling", "color", "shape", "shape_vqa")
EVALUATION_COLUMNS = ["image_id", "task", "object_index", "target_shape", "target_color", "prompt", "generated",
                      "expected", "correct", "correct_strict", "hallucinated", "target_probability", *BATCH_COLUMNS]


def load_organism(model_dir: Path) -> tuple[LlavaForConditionalGeneration, object]:
    """Model (eval mode) and processor through `models.loading.load_model`, the loader of every stage."""
    from vlminterp.models.loading import ModelSpec, load_model

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir / 'config.json'} not found: not a saved model directory")
    return load_model(ModelSpec(str(model_dir)))


def evaluate_organism(model_dir: Path, world_dir: Path, split: str = "val", max_images: int | None = None,
                      batch_size: int = 64) -> pd.DataFrame:
    """Greedy-decode every task question on ``split`` images and score the answers (see module doc)."""
    model, processor = load_organism(model_dir)
    world = load_world_spec(world_dir)
    scenes = load_scenes(world_dir, split)
    if max_images is not None:
        scenes = scenes[:max_images]
    images = {}
    for scene in scenes:
        if not scene.path.is_file():
            raise FileNotFoundError(f"image file {scene.path} listed in the annotations does not exist")
        with Image.open(scene.path) as image:
            images[scene.image_id] = image.convert("RGB")
    examples = [ex for scene in scenes for ex in task_examples(scene, world.shapes, seed=EVALUATION_SEED)]
    matcher = MentionMatcher({shape: [shape] for shape in world.shapes})
    present = {scene.image_id: scene.shapes for scene in scenes}
    objects_of = {scene.image_id: scene.objects for scene in scenes}
    max_objects = max((len(s.objects) for s in scenes), default=1)
    new_tokens = {"describe": 6 + 5 * max_objects, "polling": 4, "color": 4, "shape": 8}
    batches = AdaptiveBatch(batch_size, "organism evaluation")

    rows: list[dict] = []
    for task in ("describe", "polling", "color", "shape"):
        selected = [ex for ex in examples if ex.task == task]
        first_row, retries_before = len(rows), batches.retries
        answers = _generate(model, processor, selected, images, new_tokens[task], batches)
        if task == "describe":  # one generation per image, scored once per object
            for ex, answer in zip(selected, answers):
                mentioned = [m.category for m in matcher.find(answer)]
                hallucinated = len(set(mentioned) - present[ex.image_id])
                for index, obj in enumerate(objects_of[ex.image_id]):
                    rows.append(_row(ex, answer, obj.shape in mentioned, f"{obj.color} {obj.shape}" in answer,
                                     object_index=index, target_shape=obj.shape, target_color=obj.color,
                                     hallucinated=hallucinated))
        else:
            for ex, answer in zip(selected, answers):
                rows.append(_row(ex, answer, *score_answer(ex, answer, matcher)))
        _record_batching(rows[first_row:], batches, retries_before)
    shape_examples = [ex for ex in examples if ex.task == "shape"]
    first_row, retries_before = len(rows), batches.retries
    for ex, (token, correct, probability) in zip(shape_examples,
                                                 _next_token(model, processor, shape_examples, images, batches)):
        vqa = TaskExample(ex.image_id, "shape_vqa", ex.question, ex.target_shape, ex.target_shape, ex.target_color,
                          ex.object_index)
        row = _row(vqa, token, correct, correct, target_probability=probability)
        row["prompt"] = vqa_prompt(ex)
        rows.append(row)
    _record_batching(rows[first_row:], batches, retries_before)
    return pd.DataFrame(rows, columns=EVALUATION_COLUMNS)


def _record_batching(rows: list[dict], batches: AdaptiveBatch, retries_before: int) -> None:
    batching = batches.columns(since=retries_before)
    for row in rows:
        row.update(batching)


def vqa_prompt(example: TaskExample) -> str:
    """The Neo et al. VQA prompt: the question's prompt followed by the answer prefix ``It is a``."""
    return f"{example.prompt} {VQA_ANSWER_PREFIX}"


def score_answer(example: TaskExample, answer: str, matcher: MentionMatcher) -> tuple[bool, bool]:
    """(lenient, strict) correctness of a generated answer to a polling/color/shape question."""
    words = answer.strip().split()
    first = words[0].strip(".,!?").lower() if words else ""
    if example.task == "polling":
        return first == example.answer.lower(), answer.strip() == example.answer
    if example.task == "color":
        return first == example.answer.lower(), answer.strip() == example.answer
    if example.task == "shape":
        mentions = matcher.find(answer)
        return bool(mentions) and mentions[0].category == example.target_shape, answer.strip() == example.answer
    raise ValueError(f"score_answer does not score task {example.task!r}")


# Tasks with one short answer per question; a blind answerer gives the same answer to every one.
ONE_ANSWER_TASKS = ("polling", "color", "shape", "shape_vqa")


def summarize_evaluation(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per task (n, accuracy, strict_accuracy, Wilson 95% interval of accuracy) and
    `chance`: for ONE_ANSWER_TASKS, the accuracy of a blind answerer giving the task's commonest
    expected answer to every question (0.5 on balanced polling); NaN for describe."""
    rows = []
    for task in [t for t in EVAL_TASKS if t in set(df["task"])] + sorted(set(df["task"]) - set(EVAL_TASKS)):
        part = df[df["task"] == task]
        n, k = len(part), int(part["correct"].sum())
        low, high = wilson_interval(k, n)
        answers = part["expected"].astype(str).str.strip().str.lower()
        chance = float(answers.value_counts(normalize=True).iloc[0]) if task in ONE_ANSWER_TASKS and n else float("nan")
        rows.append({"task": task, "n": n, "accuracy": k / n if n else float("nan"),
                     "strict_accuracy": float(part["correct_strict"].mean()) if n else float("nan"),
                     "ci_low": low, "ci_high": high, "chance": chance})
    return pd.DataFrame(rows, columns=["task", "n", "accuracy", "strict_accuracy", "ci_low", "ci_high", "chance"])


def _row(example: TaskExample, generated: str, correct: bool, correct_strict: bool, **overrides) -> dict:
    row = {"image_id": example.image_id, "task": example.task, "object_index": example.object_index,
           "target_shape": example.target_shape, "target_color": example.target_color, "prompt": example.prompt,
           "generated": generated, "expected": example.answer, "correct": bool(correct),
           "correct_strict": bool(correct_strict), "hallucinated": None, "target_probability": None}
    row.update(overrides)
    return row


@torch.inference_mode()
def _generate(model, processor, examples: list[TaskExample], images: dict, max_new_tokens: int,
              batches: AdaptiveBatch) -> list[str]:
    eos = list(adapter_for(model, processor).eos_token_ids)  # any EOS of the text or generation config

    def answer(chunk: list[TaskExample]) -> list[str]:
        inputs = processor(images=[images[ex.image_id] for ex in chunk], text=[ex.prompt for ex in chunk],
                           padding=True, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos)
        new = output[:, inputs["input_ids"].shape[1]:]
        return [a.strip() for a in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]

    return [a for part in batches.iterate(examples, answer) for a in part]


@torch.inference_mode()
def _next_token(model, processor, examples: list[TaskExample], images: dict,
                batches: AdaptiveBatch) -> list[tuple[str, bool, float]]:
    """Top-1 next token after the VQA prompt, whether it is the target shape's first sub-token,
    and that sub-token's probability."""
    from vlminterp.models.adapters import answer_first_token

    tokenizer = processor.tokenizer
    first_token = {}

    def read(chunk: list[TaskExample]) -> list[tuple[str, bool, float]]:
        inputs = processor(images=[images[ex.image_id] for ex in chunk], text=[vqa_prompt(ex) for ex in chunk],
                           padding=True, return_tensors="pt")
        probabilities = model(**inputs).logits[:, -1].float().softmax(dim=-1)
        top = probabilities.argmax(dim=-1)
        target_ids = [first_token.setdefault(ex.target_shape, answer_first_token(tokenizer, VQA_ANSWER_PREFIX,
                                                                                 ex.target_shape))
                      for ex in chunk]
        return [(tokenizer.convert_ids_to_tokens(int(top[row])), int(top[row]) == target_ids[row],
                 float(probabilities[row, target_ids[row]])) for row in range(len(chunk))]

    return [result for part in batches.iterate(examples, read) for result in part]
