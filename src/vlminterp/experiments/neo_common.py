"""What the three Neo et al. experiments (N1-N3) share: targets, object cells, prompts, the mean.

    from vlminterp.experiments.neo_common import (CellSpec, PromptSpec, vqa_questions,
        compute_mean_embedding, save_mean_embedding, load_mean_embedding)

    cells = map_object_cells(dataset, selection, adapter, CellSpec(buffers=(0, 1, 2)))   # vlminterp.geometry
    questions = vqa_questions(dataset, selection, PromptSpec())     # image_id -> VQA question

Object cells. The target's mask (polygon, RLE or crowd RLE: `CocoDataset.annotation_mask`) is
mapped onto the model's image tokens through the adapter's geometry (`adapter.image_cells`:
"crop" = the HF LLaVA processor's centre crop, "pad" = the original LLaVA padding, "resize" =
InternVL's tiles + thumbnail and Qwen2-VL's dynamic grid): each token's box in the ORIGINAL image
has exact rational edges, the covered fraction is exact (`geometry.mask_tokens`), and a token is
an object token when that fraction exceeds `min_overlap` (0.0 = a mask pixel lies in its box, as
the original code meant). A target with no object token is excluded (`geometry.map_object_cells`).
Buffer b dilates the object's tokens with the 8-neighbourhood b times, within each tile (see
`geometry.map_object_cells` for how InternVL's thumbnail counts). Token sets are (N,) bool arrays
in image-token order; `geometry.TargetCells.positions` turns one into sequence positions.

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
first sub-token of the category name after that prefix (`answer_first_token`).
"""
from __future__ import annotations

import logging
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from vlminterp.batching import AdaptiveBatch
from vlminterp.data.coco import CocoDataset
from vlminterp.geometry import TargetCells, cells_by_image, check_geometry
from vlminterp.interventions import StreamingMean
from vlminterp.io import atomic_path

log = logging.getLogger(__name__)

SETTINGS = ("generative", "polling", "vqa")


# ---- specs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellSpec:
    """How a target's mask becomes image-token cells.

    geometry: "crop" (HF LLaVA-1.5 processor) or "pad" (original LLaVA code), LLaVA only; "resize"
        (the whole image resized: InternVL, Qwen2-VL, whose only geometry it is).
    min_overlap: a cell is an object cell when its covered fraction is strictly above this.
    buffers: the dilation amounts b studied (object cells dilated b times, 8-neighbourhood).
    """

    geometry: str = "crop"
    min_overlap: float = 0.0
    buffers: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self):
        if self.geometry not in ("crop", "pad", "resize"):
            raise ValueError(f"geometry must be 'crop', 'pad' or 'resize', got {self.geometry!r}")
        if not 0.0 <= self.min_overlap < 1.0:
            raise ValueError(f"min_overlap must be in [0, 1), got {self.min_overlap}")
        if not self.buffers or min(self.buffers) < 0 or len(set(self.buffers)) != len(self.buffers):
            raise ValueError(f"buffers must be distinct non-negative integers, got {self.buffers}")


@dataclass(frozen=True)
class PromptSpec:
    """The prompts of the three settings (user text; the adapter adds the chat template).

    describe: the generative setting's prompt.
    polling: the polling question; {name} = the category name.
    vqa_question: template of the VQA question over the target annotation's fields (module doc).
    vqa_questions_file: CSV (image_id, question[, annotation_id]); overrides the template.
    vqa_images: "all" (every target needs a question) or "with_question" (VQA and N3 run on the
        images the file has a question for; the others take the template, for N1's IG only).
    vqa_answer_prefix: text appended after the assistant tag (the answer's start).
    system_prompt: optional system prompt in front of the user turn.
    """

    describe: str = "Describe this image."
    polling: str = "Is there a {name} in this image?"
    vqa_question: str = "What shape is the {color} object?"
    vqa_questions_file: str | None = None
    vqa_images: str = "all"
    vqa_answer_prefix: str = "It is a"
    system_prompt: str | None = None

    def __post_init__(self):
        if self.vqa_images not in ("all", "with_question"):
            raise ValueError(f"vqa_images must be 'all' or 'with_question', got {self.vqa_images!r}")
        if self.vqa_images == "with_question" and not self.vqa_questions_file:
            raise ValueError("vqa_images='with_question' needs a questions file (vqa_questions_file)")


# ---- prompts and answers --------------------------------------------------------------------------
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


def answer_first_token(tokenizer, prefix: str, word: str) -> int:
    """Id of the first token `word` adds when it follows `prefix` after a space.

    Tokenizing the prefix alone and the prefix + " " + word and taking the first id where they
    differ gives the word's first sub-token in context (e.g. "▁dog" after "It is a" for Llama's
    SentencePiece vocabulary; the word itself for the organism's word-level vocabulary).
    """
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{prefix} {word}", add_special_tokens=False)["input_ids"]
    for index, token in enumerate(full):
        if index >= len(base) or base[index] != token:
            return int(token)
    raise ValueError(f"{word!r} adds no token after {prefix!r}")


def encode(processor, adapter, image, text: str, geometry: str, *, system_prompt: str | None = None,
           answer_prefix: str | None = None) -> tuple[torch.Tensor, dict]:
    """(input_ids (1, T), image inputs) of one image and one user text in the model's chat format.

    The image inputs are what the family's vision tower and positions need (pixel_values, and
    Qwen2-VL's image_grid_thw): `engine.prepare(input_ids, **image_inputs)`."""
    prompt = adapter.format_prompt(text, system_prompt)
    if answer_prefix:
        prompt = f"{prompt} {answer_prefix}"
    enc = processor(images=adapter.prepare_image(image, geometry), text=prompt, return_tensors="pt")
    return enc["input_ids"], adapter.image_inputs(enc)


# ---- the mean image embedding (ablation vector and IG baseline) -------------------------------------
def mean_image_ids(dataset: CocoDataset, max_images: int, seed: int, exclude: Iterable[int] = ()) -> list[int]:
    """At most `max_images` image ids of `dataset` (seeded sample, sorted), none of `exclude`."""
    excluded = {int(i) for i in exclude}
    ids = [i for i in dataset.image_ids() if i not in excluded]
    if len(ids) > max_images:
        ids = sorted(int(i) for i in np.random.default_rng(seed).choice(ids, size=max_images, replace=False))
    if not ids:
        raise ValueError(f"no images left for the mean embedding in {dataset.annotation_file}")
    return ids


@torch.no_grad()
def compute_mean_embedding(adapter, processor, dataset: CocoDataset, image_ids: Sequence[int],
                           geometry: str, batch_size: int | AdaptiveBatch = 16) -> tuple[torch.Tensor, int]:
    """Streaming mean of the post-projector image embedding over every position of `image_ids`.

    Returns (mean (d,) float32, number of vectors averaged). Memory is one batch of images; pass an
    `AdaptiveBatch` to read back the batch size used after CUDA out-of-memory halved it.
    """
    check_geometry(adapter, geometry, "compute_mean_embedding")
    batches = batch_size if isinstance(batch_size, AdaptiveBatch) else AdaptiveBatch(batch_size, "mean embedding")
    running = StreamingMean()
    device = adapter.embed_tokens.weight.device

    def features(chunk: list[int]) -> torch.Tensor:
        images = [adapter.prepare_image(dataset.load_image(int(i)), geometry) for i in chunk]
        image_inputs = adapter.image_inputs(processor.image_processor(images=images, return_tensors="pt"))
        return adapter.image_features(**{k: v.to(device) for k, v in image_inputs.items()})

    for chunk_features in batches.iterate(image_ids, features):
        running.update(chunk_features)
    return running.mean(torch.float32), running.count


def save_mean_embedding(mean: torch.Tensor, count: int, image_ids: Sequence[int], path: str | os.PathLike,
                        batching: dict[str, int] | None = None) -> None:
    """Write the mean vector as safetensors (tensor "mean"; metadata: count, number of images and
    `batching`, the batch_size / oom_retries of `AdaptiveBatch.columns`)."""
    from safetensors.torch import save_file

    metadata = {"count": str(count), "n_images": str(len(image_ids)),
                "first_image_ids": ",".join(str(i) for i in list(image_ids)[:20])}
    metadata.update({key: str(value) for key, value in (batching or {}).items()})
    with atomic_path(path) as tmp:
        save_file({"mean": mean.detach().cpu().float().contiguous()}, str(tmp), metadata=metadata)
        sort_safetensors_header(tmp)


def sort_safetensors_header(path: str | os.PathLike) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys: safetensors writes its metadata
    in hash-map order, which changes from process to process (and so would the file's bytes)."""
    import json
    import struct

    raw = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)              # data stays 8-byte aligned, as safetensors writes it
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])


def load_mean_embedding(path: str | os.PathLike) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["mean"]


def load_adapter_geometry(spec) -> object:
    """The adapter of a model (for its cell grid and prompt format) without loading any weights.

    The model is instantiated on the meta device from its config, so this is cheap even for 7B.
    """
    from transformers import AutoConfig

    from vlminterp.models.adapters import adapter_class_for_config

    kwargs = {} if Path(spec.id_or_path).is_dir() else {"revision": spec.revision}
    config = AutoConfig.from_pretrained(spec.id_or_path, **kwargs)
    adapter_class = adapter_class_for_config(config)
    processor = adapter_class.load_processor(spec.id_or_path, **kwargs)
    with torch.device("meta"):
        model = adapter_class.model_class()(config)
    return adapter_class(model, processor)


# ---- what every per-image stage loads -----------------------------------------------------------------
@dataclass
class StageInputs:
    """Everything a per-image Neo stage needs for one shard of the targets."""

    model_parts: tuple  # (model, processor, adapter)
    dataset: CocoDataset
    selection: pd.DataFrame  # this shard's rows of the selection table
    cells: dict[int, TargetCells]
    prompts: PromptSpec
    vocabulary: object  # SynonymVocabulary
    cell_spec: CellSpec


def load_stage_inputs(paths, params, shard: str) -> StageInputs:
    """Load the model, the dataset split, this shard's targets and their cells.

    `paths`: has `selection` and `cells` (tables of select_neo_targets and
    map_object_cells). `params`: has `model` (ModelSpec keyword arguments), `split`, `cells`
    (CellSpec section), `prompts` (PromptSpec section), `vocabulary` (name or path) and
    `images_per_shard`.
    """
    from vlminterp.io import read_table
    from vlminterp.models.adapters import adapter_for
    from vlminterp.models.loading import ModelSpec, load_model
    from vlminterp.scoring.vocabulary import load_vocabulary
    from vlminterp.sharding import shard_rows
    from vlminterp.specs import build_spec

    selection = shard_rows(read_table(paths.selection), shard, params.images_per_shard)
    cells = read_table(paths.cells)
    cells = cells[cells["image_id"].isin(selection["image_id"])]
    dataset = CocoDataset.load(params.dataset_dir, params.split)
    model, processor = load_model(ModelSpec(**params.model))
    return StageInputs(
        model_parts=(model, processor, adapter_for(model, processor)),
        dataset=dataset, selection=selection, cells=cells_by_image(cells),
        prompts=build_spec(PromptSpec, params.prompts, where="neo.prompts"),
        vocabulary=load_vocabulary(params.vocabulary, categories=list(dataset.category_names().values())),
        cell_spec=build_spec(CellSpec, params.cells, where="neo.cells"))
