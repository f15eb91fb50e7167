"""The organism's task mix: questions and answers generated from a shapes world's annotations.

    from vlminterp.organism.tasks import load_scenes, task_examples, format_prompt
    scenes = load_scenes(world_dir, "val")                 # one Scene per image, objects in reading order
    for ex in task_examples(scenes[0], shapes=("circle", ...), seed=0):
        print(format_prompt(ex.question), ex.answer)
    # USER: <image>\\nDescribe this image. ASSISTANT:  There is a red circle and a blue square.
    # USER: <image>\\nIs there a star in this image? ASSISTANT:  No
    # USER: <image>\\nWhat color is the circle? ASSISTANT:  red
    # USER: <image>\\nWhat shape is the red object? ASSISTANT:  It is a circle.

Training and evaluation share these functions, so the questions the model is scored on are the
questions it was taught. Polling is balanced within every image: n present shapes (answer Yes) and
n absent shapes (answer No), n = min(#present, #absent), so every present shape is asked about
whenever the world has enough shapes. The Neo et al. VQA readout uses the "shape" question with the
answer prefix ``It is a`` appended to the prompt (``VQA_ANSWER_PREFIX``); the next token must be
the shape name.

The text-only documents of the language model's pretraining (`text_documents`) are the same
questions and answers with a caption of the image in place of the image, and the captions alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlminterp.data.shapes import article, join_phrases

TASKS: tuple[str, ...] = ("describe", "polling", "color", "shape")
PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"
VQA_ANSWER_PREFIX = "It is a"

QUESTIONS = {
    "describe": "Describe this image.",
    "polling": "Is there a {shape} in this image?",
    "color": "What color is the {shape}?",
    "shape": "What shape is the {color} object?",
}
POLLING_ANSWERS = {True: "Yes", False: "No"}


@dataclass(frozen=True)
class SceneObject:
    """One annotated object: its shape (category name), colour, COCO annotation id and bbox."""

    shape: str
    color: str
    annotation_id: int
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class Scene:
    """One image of a world split and its objects in reading order (annotation id order)."""

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    objects: tuple[SceneObject, ...]

    @property
    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}


@dataclass(frozen=True)
class TaskExample:
    """One question about one image with its expected answer.

    ``target_shape``/``target_color`` name the object the question is about (the polled shape for
    polling, which may be absent); ``object_index`` is its position in reading order (None for
    describe and for absent polled shapes).
    """

    image_id: int
    task: str
    question: str
    answer: str
    target_shape: str | None = None
    target_color: str | None = None
    object_index: int | None = None

    @property
    def prompt(self) -> str:
        return format_prompt(self.question)


def format_prompt(question: str) -> str:
    """LLaVA-1.5's single-turn prompt with one image."""
    return PROMPT_TEMPLATE.format(question=question)


def describe_answer(objects: tuple[SceneObject, ...] | list[SceneObject]) -> str:
    """"There is a red circle, a blue square and an orange star." (reading order)."""
    phrases = [f"{article(o.color)} {o.color} {o.shape}" for o in objects]
    return f"There is {join_phrases(phrases)}."


def shape_answer(shape: str) -> str:
    return f"{VQA_ANSWER_PREFIX} {shape}."


def load_scenes(world_dir: Path, split: str) -> list[Scene]:
    """Read ``annotations/instances_{split}.json`` of a shapes world into scenes (sorted by image id)."""
    path = Path(world_dir) / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found (split {split!r} of world {world_dir})")
    data = json.loads(path.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if "attributes" not in ann or "color" not in ann["attributes"]:
            raise ValueError(f"{path}: annotation {ann.get('id')} has no attributes.color (not a shapes world?)")
        by_image.setdefault(ann["image_id"], []).append(ann)
    scenes = []
    for image in sorted(data["images"], key=lambda i: i["id"]):
        anns = sorted(by_image.get(image["id"], []), key=lambda a: a["id"])
        objects = tuple(SceneObject(names[a["category_id"]], a["attributes"]["color"], a["id"], tuple(a["bbox"]))
                        for a in anns)
        scenes.append(Scene(image["id"], image["file_name"], Path(world_dir) / "images" / split / image["file_name"],
                            image["width"], image["height"], objects))
    return scenes


def task_examples(scene: Scene, shapes: tuple[str, ...] | list[str], seed: int,
                  tasks: tuple[str, ...] = TASKS) -> list[TaskExample]:
    """Every question of ``tasks`` about ``scene``; absent polled shapes are drawn with ``seed``."""
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; known: {TASKS}")
    examples: list[TaskExample] = []
    iid = scene.image_id
    if "describe" in tasks:
        examples.append(TaskExample(iid, "describe", QUESTIONS["describe"], describe_answer(scene.objects)))
    if "polling" in tasks:
        # Exactly as many Yes as No questions per image: n present and n absent shapes, where n is
        # the smaller of the two counts (all present shapes whenever enough shapes are absent).
        rng = np.random.default_rng([seed, iid])
        absent = [s for s in shapes if s not in scene.shapes]
        n = min(len(scene.objects), len(absent))
        asked_present = sorted(int(i) for i in rng.choice(len(scene.objects), size=n, replace=False))
        asked_absent = [absent[int(i)] for i in sorted(rng.choice(len(absent), size=n, replace=False))]
        for index in asked_present:
            obj = scene.objects[index]
            examples.append(TaskExample(iid, "polling", QUESTIONS["polling"].format(shape=obj.shape),
                                        POLLING_ANSWERS[True], obj.shape, obj.color, index))
        for shape in asked_absent:
            examples.append(TaskExample(iid, "polling", QUESTIONS["polling"].format(shape=shape),
                                        POLLING_ANSWERS[False], shape))
    for task, answer_of in (("color", lambda o: o.color), ("shape", lambda o: shape_answer(o.shape))):
        if task not in tasks:
            continue
        for index, obj in enumerate(scene.objects):
            question = QUESTIONS[task].format(shape=obj.shape, color=obj.color)
            examples.append(TaskExample(iid, task, question, answer_of(obj), obj.shape, obj.color, index))
    return examples


def load_captions(world_dir: Path, split: str) -> dict[int, list[str]]:
    """Image id -> the world's captions of that image (``annotations/captions_{split}.json``, id order)."""
    path = Path(world_dir) / "annotations" / f"captions_{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} not found (split {split!r} of world {world_dir})")
    captions: dict[int, list[str]] = {}
    for ann in sorted(json.loads(path.read_text())["annotations"], key=lambda a: a["id"]):
        captions.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]))
    return captions


def text_documents(scene: Scene, captions: list[str], shapes: tuple[str, ...] | list[str], seed: int) -> list[str]:
    """Text-only documents about ``scene``: each caption alone, then every task question in the
    chat format with a caption in place of the image, followed by its answer, e.g.
    "USER: a red circle and a blue square.\nWhat color is the circle? ASSISTANT: red"
    (captions taken in turn). The language model's pretraining reads these, never an image."""
    if not captions:
        raise ValueError(f"image {scene.image_id} ({scene.file_name}) has no caption")
    documents = list(captions)
    for k, example in enumerate(task_examples(scene, shapes, seed=seed)):
        context = captions[k % len(captions)]
        documents.append(f"{example.prompt.replace('<image>', context)} {example.answer}")
    return documents


def vocabulary_words(shapes: tuple[str, ...] | list[str], colors: tuple[str, ...] | list[str]) -> list[str]:
    """Every word and punctuation mark the task mix can produce, in a fixed order."""
    from vlminterp.organism.tokenizer import split_words

    texts = [PROMPT_TEMPLATE.replace("<image>", "").replace("{question}", ""), *QUESTIONS.values(), *POLLING_ANSWERS.values(),
             describe_answer([]), shape_answer(""), "a an , and", " ".join(shapes), " ".join(colors),
             # Lower-case answers and the LLaVA-1.5 system prompt, so other prompts stay in-vocabulary.
             "yes no describe the image what is it there",
             "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
             "helpful, detailed, and polite answers to the human's questions."]
    words: list[str] = []
    for text in texts:
        for word in split_words(text.replace("{shape}", "").replace("{color}", "")):
            if word not in words:
                words.append(word)
    return words
