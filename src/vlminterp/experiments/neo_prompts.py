"""The prompts of Neo et al.'s three settings (N1-N3): describe, polling and VQA questions, and answers.

    prompts = PromptSpec()                                          # config section neo.prompts
    questions = vqa_questions(dataset, selection, prompts)          # image_id -> VQA question
    asked = question_image_ids(prompts)                             # None: every target

VQA question source (N1's VQA setting and N3). Neo et al. released their questions
(`data.authors_data`: one question for each of 100 COCO train2017 images; their VQA and N3 runs
used exactly those images); the paper configs download and ask them (neo.authors_data.questions).
Here a question is either
  * a row of a questions file (CSV with columns image_id, question; optional annotation_id): the
    authors' questions converted, or questions written once and kept with the run, or
  * a template formatted with the target annotation's fields: {name} (category name),
    {supercategory} and every key of the annotation's `attributes` (the shapes world stores the
    object's colour there, so the default "What shape is the {color} object?" is exactly the
    organism's training question). A template naming a field an annotation lacks is an error
    that says to use a questions file; it never silently falls back to a generic question.
With `vqa_images = "with_question"` (the authors' design) the VQA setting and N3 run only on the
images the file has a question for (`question_image_ids`); N1's other settings run on every
target, and their integrated-gradient target is asked with the template (the documented fallback).
The assistant turn is then primed with the answer prefix ("It is a"), and the answer token is the
first sub-token of the category name after that prefix (`models.adapters.answer_first_token`).
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import pandas as pd

from vlminterp.data.coco import CocoDataset
from vlminterp.specs import configured

SETTINGS = ("generative", "polling", "vqa")


@dataclass(frozen=True)
@configured("neo.prompts")
class PromptSpec:
    """The prompts of N1-N3's settings (user text; the adapter adds the chat template): config
    section neo.prompts (each key's type, default and meaning: workflow/schemas/config.schema.yaml)."""

    describe: str
    polling: str
    vqa_question: str
    vqa_questions_file: str | None
    vqa_images: str
    vqa_answer_prefix: str
    system_prompt: str | None

    def __post_init__(self):
        if self.vqa_images not in ("all", "with_question"):
            raise ValueError(f"vqa_images must be 'all' or 'with_question', got {self.vqa_images!r}")
        if self.vqa_images == "with_question" and not self.vqa_questions_file:
            raise ValueError("vqa_images='with_question' needs a questions file (vqa_questions_file)")


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def annotation_fields(dataset: CocoDataset, annotation_id: int) -> dict[str, str]:
    """Fields a VQA template may use: name, supercategory and the annotation's `attributes`."""
    ann = dataset.annotation(annotation_id)
    category = dataset.coco.cats[ann["category_id"]]
    fields = {str(k): str(v) for k, v in (ann.get("attributes") or {}).items()}
    fields.update(name=category["name"], supercategory=str(category.get("supercategory", "")))
    return fields


def _questions_file(prompts: PromptSpec) -> pd.DataFrame:
    table = pd.read_csv(prompts.vqa_questions_file)
    missing = {"image_id", "question"} - set(table.columns)
    if missing:
        raise ValueError(f"{prompts.vqa_questions_file}: lacks column(s) {sorted(missing)}")
    return table


def question_image_ids(prompts: PromptSpec) -> set[int] | None:
    """The images the VQA setting and N3 run on: those of the questions file when
    `vqa_images == "with_question"`, else None (every target)."""
    if prompts.vqa_images != "with_question":
        return None
    return {int(i) for i in _questions_file(prompts)["image_id"]}


def vqa_questions(dataset: CocoDataset, selection: pd.DataFrame, prompts: PromptSpec) -> dict[int, str]:
    """image_id -> VQA question for every selected image (source rules in the module docstring)."""
    if prompts.vqa_questions_file:
        table = _questions_file(prompts)
        out = {}
        for row in selection.itertuples(index=False):
            match = table[table["image_id"] == row.image_id]
            if match.empty and prompts.vqa_images == "with_question":
                out[int(row.image_id)] = _template_question(dataset, int(row.annotation_id), prompts)
                continue
            if "annotation_id" in table.columns:
                match = match[match["annotation_id"] == row.annotation_id]
            if len(match) != 1:
                raise ValueError(f"{prompts.vqa_questions_file}: {len(match)} questions for image "
                                 f"{row.image_id} (annotation {row.annotation_id}); need exactly one")
            out[int(row.image_id)] = str(match["question"].iloc[0])
        return out
    return {int(row.image_id): _template_question(dataset, int(row.annotation_id), prompts)
            for row in selection.itertuples(index=False)}


def _template_question(dataset: CocoDataset, annotation_id: int, prompts: PromptSpec) -> str:
    fields = annotation_fields(dataset, annotation_id)
    lacking = [f for f in _template_fields(prompts.vqa_question) if f not in fields]
    if lacking:
        raise ValueError(
            f"VQA question template {prompts.vqa_question!r} uses field(s) {lacking} that annotation "
            f"{annotation_id} lacks (it has {sorted(fields)}); give a questions file "
            f"(neo.prompts.vqa_questions_file) or a template over those fields")
    return prompts.vqa_question.format(**fields)


