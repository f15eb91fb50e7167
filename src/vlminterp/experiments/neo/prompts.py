"""The prompts of Neo et al.'s three settings (N1-N3): describe, polling and VQA questions, and answers.

    prompts = PromptSpec()                                          # config section neo.prompts
    questions = vqa_questions(dataset, selection, prompts)          # image_id -> VQA question
    asked = question_image_ids(prompts)                             # None: every target

A VQA question comes from a questions file or from a template over the target annotation's
fields; a template naming a field an annotation lacks is an error. Where the questions come from
and which images ask them: docs/PROTOCOLS.md, "Targets and object cells", VQA questions.
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


