"""Staged training of the model organism on a shapes world, LLaVA's recipe.

    from vlminterp.organism import OrganismSpec, train_organism
    losses = train_organism(OrganismSpec(), world_dir=Path("data/shapes"), model_dir=Path("results/organism"))
    # losses: tidy table (step, stage, task, loss); the model dir loads with
    # AutoProcessor.from_pretrained / LlavaForConditionalGeneration.from_pretrained.

First a SentencePiece tokenizer is trained on the world's text (the training split's text
documents, ``tasks.text_documents``). Then four stages (``STAGES``), each with its own AdamW,
warm-up and cosine schedule, all drawing from one generator seeded by ``spec.seed``:

0. "vision": the CLIP tower alone; a temporary linear head on the selected feature layer
   predicts, per patch, the shape and the colour of the object covering most of the patch (or
   background), labels from the COCO masks; the head is discarded afterwards.
1. "text": the language model alone on text documents (no image), loss on every token.
2. "align": the projector alone on image -> description, tower and language model frozen.
3. "instruct": projector + language model on the task mix (``tasks.py``), loss on answer tokens.

In stages 1-3 each example (document) weighs the same whatever its length. The training set is
rendered and tokenised once into tensors; no image processor runs inside the loop, and a frozen
tower's features are computed once. A rerun on the same machine and thread count gives identical
weights.

With a ``checkpoint_dir`` (rule train_organism passes ``results/<run>/.model.checkpoint``), the
state of training (stage, weights, optimizer, random generators, losses so far) is saved every
``CHECKPOINT_EVERY`` steps; a run killed in between resumes from the last one and ends with the
same weights as an uninterrupted run. The checkpoint is removed once the model is written.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from vlminterp.data.shapes import load_world_spec
from vlminterp.io import atomic_path, write_json
from vlminterp.organism.architecture import OrganismSpec, build_model, num_image_tokens
from vlminterp.models.routing import routing_layout
from vlminterp.organism.tasks import TASKS, format_prompt, VQA_ANSWER_PREFIX, Scene, load_captions, load_scenes, task_examples, text_documents
from vlminterp.organism.tokenizer import IMAGE, name_pieces, sentencepiece_processor, train_sentencepiece

IGNORE_INDEX = -100
LOSS_COLUMNS = ["step", "stage", "task", "loss"]
STAGES: tuple[str, ...] = ("vision", "text", "align", "instruct")
CHECKPOINT_EVERY = 100      # steps between training checkpoints (about 0.1 s each for the organism)
TIMINGS_FILE = "timings.json"   # wall/CPU seconds of training: the one model file that differs per run


class TrainingCheckpoint:
    """Periodic training state in ``directory/checkpoint.pt``, valid only for the same spec and world.

    The saved state holds the stage (one of ``STAGES``), the next step, the model's and the
    optimizer's (and stage 0's head's) state, the generator and torch RNG states and the loss rows.
    """

    def __init__(self, directory: Path | None, fingerprint: dict, every: int = CHECKPOINT_EVERY):
        self.path = None if directory is None else Path(directory) / "checkpoint.pt"
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)
        self.every = every

    def load(self) -> dict | None:
        """The saved state, or None when there is none or it belongs to other settings."""
        if self.path is None or not self.path.is_file():
            return None
        state = torch.load(self.path, weights_only=False)
        return state if state.get("fingerprint") == self.fingerprint else None

    def due(self, step: int, last_step: int) -> bool:
        return self.path is not None and (step + 1) % self.every == 0 and step != last_step

    def save(self, stage: str, next_step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, rows: list[dict], head: torch.nn.Module | None = None) -> None:
        state = {"fingerprint": self.fingerprint, "stage": stage, "next_step": next_step,
                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "head": None if head is None else head.state_dict(),
                 "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "rows": list(rows)}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def remove(self) -> None:
        if self.path is not None and self.path.parent.is_dir():
            import shutil

            shutil.rmtree(self.path.parent)


@dataclass
class Sequences:
    """Tokenised examples, right-padded to one length.

    input_ids, labels, attention_mask: (examples, length); labels are IGNORE_INDEX except on the
        tokens the loss is on (answer + </s> for a task example; every token after <s> of a text
        document).
    lengths: (examples,) unpadded length of each example.
    task_index: (examples,) index into ``TASKS`` (-1 for a text document).
    image_index: (examples,) row of ``TrainingData.pixel_values`` each example shows (-1: none).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    task_index: torch.Tensor
    image_index: torch.Tensor

    @classmethod
    def pack(cls, sequences: list[list[int]], loss_starts: list[int], pad_token_id: int,
             task_index: list[int], image_index: list[int]) -> "Sequences":
        length = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        attention_mask = torch.zeros_like(input_ids)
        for i, (sequence, start) in enumerate(zip(sequences, loss_starts)):
            input_ids[i, :len(sequence)] = torch.tensor(sequence)
            labels[i, start:len(sequence)] = torch.tensor(sequence[start:])
            attention_mask[i, :len(sequence)] = 1
        return cls(input_ids, labels, attention_mask, torch.tensor([len(s) for s in sequences]),
                   torch.tensor(task_index), torch.tensor(image_index))


@dataclass
class TrainingData:
    """The training split as tensors.

    pixel_values: (images, 3, H, W) processed exactly as the processor does.
    patch_shape, patch_color: (images, patches) class per patch; 0 = background, k = k-th name.
    examples: the task mix (stages 2 and 3), one row per question about an image.
    documents: the text-only documents (stage 1).
    """

    pixel_values: torch.Tensor
    patch_shape: torch.Tensor
    patch_color: torch.Tensor
    examples: Sequences
    documents: Sequences


def load_pixels(processor: LlavaProcessor, paths: list[Path], chunk: int = 256) -> torch.Tensor:
    """Run the processor's image pipeline over image files, in chunks; a missing file names its path."""
    batches = []
    for start in range(0, len(paths), chunk):
        images = []
        for path in paths[start:start + chunk]:
            if not path.is_file():
                raise FileNotFoundError(f"image file {path} listed in the annotations does not exist")
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        batches.append(processor.image_processor(images=images, return_tensors="pt")["pixel_values"])
    return torch.cat(batches)


def patch_labels(world_dir: Path, split: str, scenes: list[Scene], shapes: tuple[str, ...],
                 colors: tuple[str, ...], patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch (shape, colour) class of the object covering most of each patch (0 = background)."""
    from pycocotools.coco import COCO

    coco = _quiet(lambda: COCO(str(Path(world_dir) / "annotations" / f"instances_{split}.json")))
    shape_ids = {s: i + 1 for i, s in enumerate(shapes)}
    color_ids = {c: i + 1 for i, c in enumerate(colors)}
    shape_labels, color_labels = [], []
    for scene in scenes:
        grid_h, grid_w = scene.height // patch_size, scene.width // patch_size
        best = np.zeros((grid_h, grid_w), dtype=np.int64)
        shape_map = np.zeros((grid_h, grid_w), dtype=np.int64)
        color_map = np.zeros((grid_h, grid_w), dtype=np.int64)
        for obj in scene.objects:
            mask = coco.annToMask(coco.anns[obj.annotation_id])[:grid_h * patch_size, :grid_w * patch_size]
            cover = mask.reshape(grid_h, patch_size, grid_w, patch_size).sum(axis=(1, 3))
            wins = cover > best
            best = np.where(wins, cover, best)
            shape_map[wins] = shape_ids[obj.shape]
            color_map[wins] = color_ids[obj.color]
        shape_labels.append(shape_map.reshape(-1))
        color_labels.append(color_map.reshape(-1))
    return torch.from_numpy(np.stack(shape_labels)), torch.from_numpy(np.stack(color_labels))


def training_scenes(world_dir: Path, spec: OrganismSpec) -> list[Scene]:
    """The training split's scenes (the first ``spec.max_train_images``)."""
    scenes = load_scenes(world_dir, "train")
    if spec.max_train_images is not None:
        scenes = scenes[:spec.max_train_images]
    if not scenes:
        raise ValueError(f"world {world_dir} has no training images")
    return scenes


def training_documents(world_dir: Path, scenes: list[Scene], shapes: tuple[str, ...], seed: int) -> list[str]:
    """The text-only documents of the training scenes (tokenizer corpus and stage 1's data)."""
    captions = load_captions(world_dir, "train")
    return [doc for scene in scenes for doc in text_documents(scene, captions.get(scene.image_id, []), shapes, seed)]


def train_tokenizer(documents: list[str], spec: OrganismSpec, image_size: int, shapes: tuple[str, ...],
                    answer_prefix: str) -> LlavaProcessor:
    """The organism's processor around a SentencePiece model trained on ``documents``.

    Raises ValueError when two shape names start with the same piece after ``answer_prefix``: the
    first-sub-token readouts (Neo et al.'s VQA answer, the logit lens) could not tell them apart."""
    processor = sentencepiece_processor(
        train_sentencepiece(documents, spec.tokenizer_vocab_size, spec.tokenizer_max_piece_length),
        image_size, spec.patch_size)
    from vlminterp.models.adapters import answer_first_token

    first: dict[int, str] = {}
    for shape in shapes:
        token = answer_first_token(processor.tokenizer, answer_prefix, shape)
        if token in first:
            raise ValueError(
                f"shapes {first[token]!r} and {shape!r} both start with the piece "
                f"{processor.tokenizer.convert_ids_to_tokens(token)!r}; change "
                f"OrganismSpec.tokenizer_max_piece_length={spec.tokenizer_max_piece_length} or "
                f"tokenizer_vocab_size={spec.tokenizer_vocab_size}")
        first[token] = shape
    return processor


def prepare_training_data(processor: LlavaProcessor, world_dir: Path, spec: OrganismSpec,
                          shapes: tuple[str, ...], colors: tuple[str, ...],
                          documents: list[str]) -> TrainingData:
    """Render, label and tokenise the training split once (``documents``: `training_documents`)."""
    scenes = training_scenes(world_dir, spec)
    pixel_values = load_pixels(processor, [s.path for s in scenes])
    patch_shape, patch_color = patch_labels(world_dir, "train", scenes, shapes, colors, spec.patch_size)

    tokenizer = processor.tokenizer
    n_tokens = num_image_tokens(pixel_values.shape[-1], spec.patch_size)
    sequences, answer_starts, image_index, task_index = [], [], [], []
    prompt_cache: dict[str, list[int]] = {}
    for row, scene in enumerate(scenes):
        for example in task_examples(scene, shapes, seed=spec.seed):
            expanded = example.prompt.replace(IMAGE, IMAGE * n_tokens)
            prompt_ids = prompt_cache.get(example.prompt)
            if prompt_ids is None:
                prompt_ids = prompt_cache[example.prompt] = tokenizer(expanded)["input_ids"]
            full = tokenizer(f"{expanded} {example.answer}")["input_ids"]
            if full[:len(prompt_ids)] != prompt_ids:
                raise ValueError(f"the answer {example.answer!r} changes how its prompt {example.prompt!r} tokenises")
            sequences.append(full + [tokenizer.eos_token_id])
            answer_starts.append(len(prompt_ids))
            image_index.append(row)
            task_index.append(TASKS.index(example.task))
    examples = Sequences.pack(sequences, answer_starts, tokenizer.pad_token_id, task_index, image_index)
    encoded = tokenizer(documents)["input_ids"]
    documents_data = Sequences.pack([ids + [tokenizer.eos_token_id] for ids in encoded], [1] * len(encoded),
                                     tokenizer.pad_token_id, [-1] * len(encoded), [-1] * len(encoded))
    for name, part in (("training sequences", examples), ("text documents", documents_data)):
        unknown = (part.input_ids == tokenizer.unk_token_id).any(dim=1)
        if unknown.any():
            raise ValueError(f"{int(unknown.sum())} {name} contain <unk>: the tokenizer misses a character")
    return TrainingData(pixel_values, patch_shape, patch_color, examples, documents_data)


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _selected_patch_features(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """The tower's features exactly as LLaVA selects them (feature layer, CLS dropped), pre-projector."""
    config = model.config
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    features = hidden[config.vision_feature_layer]
    return features[:, 1:] if config.vision_feature_select_strategy == "default" else features


def train_vision_tower(model: LlavaForConditionalGeneration, data: TrainingData, spec: OrganismSpec,
                       n_shapes: int, n_colors: int, generator: torch.Generator,
                       checkpoint: TrainingCheckpoint | None = None, resume: dict | None = None) -> list[dict]:
    """Stage 0: per-patch shape and colour classification through a temporary linear head.

    Returns every loss row so far (those of `resume`, a stage-0 checkpoint state, included)."""
    rows: list[dict] = list(resume["rows"]) if resume else []
    if spec.vision_steps == 0:
        return rows
    tower = model.model.vision_tower
    n_joint = n_shapes * n_colors + 1
    head = torch.nn.Linear(spec.vision_hidden_size, (n_shapes + 1) + (n_colors + 1) + n_joint)
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=spec.vision_lr, weight_decay=spec.weight_decay)
    first_step = 0
    if resume:
        head.load_state_dict(resume["head"])
        optimizer.load_state_dict(resume["optimizer"])
        first_step = resume["next_step"]
    tower.train()
    progress = tqdm(range(first_step, spec.vision_steps), desc="stage vision", mininterval=5,
                    initial=first_step, total=spec.vision_steps)
    for step in progress:
        _set_lr(optimizer, spec.vision_lr * _schedule(step, spec.vision_steps, spec.warmup_steps))
        batch = torch.randint(len(data.pixel_values), (spec.vision_batch_size,), generator=generator)
        logits = head(_selected_patch_features(model, data.pixel_values[batch])).flatten(0, 1)
        shape, color = data.patch_shape[batch].flatten(), data.patch_color[batch].flatten()
        # Joint class: 0 = background, else 1 + shape * n_colors + colour (both 0-based).
        joint = torch.where(shape > 0, 1 + (shape - 1) * n_colors + (color - 1), 0)
        losses = {
            "patch_shape": F.cross_entropy(logits[:, :n_shapes + 1], shape),
            "patch_color": F.cross_entropy(logits[:, n_shapes + 1:n_shapes + n_colors + 2], color),
        }
        if spec.patch_pair_target:
            losses["patch_shape_color"] = F.cross_entropy(logits[:, n_shapes + n_colors + 2:], joint)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        optimizer.step()
        if step % spec.log_every == 0 or step == spec.vision_steps - 1:
            rows += [{"step": step, "stage": "vision", "task": name, "loss": value.item()}
                     for name, value in losses.items()]
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if checkpoint and checkpoint.due(step, spec.vision_steps - 1):
            checkpoint.save("vision", step + 1, model, optimizer, generator, rows, head=head)
    return rows


@dataclass(frozen=True)
class SequenceStage:
    """One of stages 1-3: which parameters train, on which examples, how long.

    name: "text", "align" or "instruct"; steps / batch_size / lr: its schedule.
    trained: module name -> learning-rate multiplier ("projector", "language_model", "tower");
        every other parameter is frozen.
    task_weights: (task, weight) pairs sampling the batch slots among ``TrainingData.examples``
        by task; empty: uniform over ``TrainingData.documents`` (text only).
    """

    name: str
    steps: int
    batch_size: int
    lr: float
    trained: tuple[tuple[str, float], ...]
    task_weights: tuple[tuple[str, float], ...] = ()


def sequence_stages(spec: OrganismSpec) -> tuple[SequenceStage, ...]:
    """Stages 1-3 of ``spec`` (LLaVA's recipe after the vision tower)."""
    instruct = [("projector", 1.0), ("language_model", 1.0)]
    if spec.tower_lr_scale > 0:
        instruct.append(("tower", spec.tower_lr_scale))
    return (
        SequenceStage("text", spec.text_steps, spec.text_batch_size, spec.text_lr, (("language_model", 1.0),)),
        SequenceStage("align", spec.align_steps, spec.align_batch_size, spec.align_lr, (("projector", 1.0),),
                      (("describe", 1.0),)),
        SequenceStage("instruct", spec.language_steps, spec.language_batch_size, spec.language_lr, tuple(instruct),
                      spec.task_weights),
    )


def _module_parameters(model: LlavaForConditionalGeneration, name: str) -> list[torch.nn.Parameter]:
    modules = {"tower": [model.model.vision_tower], "projector": [model.model.multi_modal_projector],
               "language_model": [model.model.language_model, model.lm_head]}
    return [p for module in modules[name] for p in module.parameters()]


def train_sequences(model: LlavaForConditionalGeneration, data: TrainingData, spec: OrganismSpec,
                    stage: SequenceStage, generator: torch.Generator, step_offset: int = 0,
                    rows: list[dict] | None = None, checkpoint: TrainingCheckpoint | None = None,
                    resume: dict | None = None, tower_features: torch.Tensor | None = None) -> list[dict]:
    """Train ``stage``'s modules on its examples with the per-example mean loss of the labelled tokens.

    Appends to ``rows`` (the losses so far) and returns them; ``resume`` is a checkpoint state of
    this stage. ``tower_features``: the frozen tower's features of every image (else computed
    per step)."""
    rows = list(resume["rows"]) if resume else list(rows or [])
    if stage.steps == 0:
        return rows
    groups = [{"params": _module_parameters(model, name), "scale": scale} for name, scale in stage.trained]
    trained = {id(p) for g in groups for p in g["params"]}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    optimizer = torch.optim.AdamW(groups, lr=stage.lr, weight_decay=spec.weight_decay)
    first_step = 0
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        first_step = resume["next_step"]
    model.train()

    sequences = data.examples if stage.task_weights else data.documents
    if stage.task_weights:
        weights = dict(stage.task_weights)
        pools = {t: torch.nonzero(sequences.task_index == TASKS.index(t)).flatten()
                 for t in TASKS if weights.get(t, 0) > 0}
        pools = {t: ix for t, ix in pools.items() if len(ix)}
        if not pools:
            raise ValueError(f"stage {stage.name}: no training examples for any task with a positive weight")
    else:
        pools = {"text": torch.arange(len(sequences.input_ids))}
        weights = {"text": 1.0}
    task_names = list(pools)
    task_probs = torch.tensor([weights[t] for t in task_names])
    with_image = bool(stage.task_weights)
    if with_image and tower_features is None and not any(name == "tower" for name, _ in stage.trained):
        tower_features = _frozen_tower_features(model, data.pixel_values)
    progress = tqdm(range(first_step, stage.steps), desc=f"stage {stage.name}", mininterval=5,
                    initial=first_step, total=stage.steps)
    for step in progress:
        _set_lr(optimizer, stage.lr * _schedule(step, stage.steps, spec.warmup_steps))
        slot_tasks = torch.multinomial(task_probs, stage.batch_size, replacement=True, generator=generator)
        batch = torch.stack([pools[task_names[t]][torch.randint(len(pools[task_names[t]]), (1,), generator=generator)[0]]
                             for t in slot_tasks.tolist()])
        length = int(sequences.lengths[batch].max())
        input_ids, attention_mask = sequences.input_ids[batch, :length], sequences.attention_mask[batch, :length]
        images = sequences.image_index[batch]
        labels = sequences.labels[batch, :length]
        # a planted routing (OrganismSpec.routing) sees the answer start where the loss starts
        layout = routing_layout(model, input_ids == model.config.image_token_id,
                                (labels != IGNORE_INDEX).int().argmax(dim=1)) if with_image else nullcontext()
        with layout:
            logits = _sequence_logits(model, data, input_ids, attention_mask, images, with_image, tower_features)
        per_example = answer_loss(logits, labels)
        loss = per_example.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], spec.grad_clip)
        optimizer.step()
        if step % spec.log_every == 0 or step == stage.steps - 1:
            if with_image:
                tasks_in_batch = sequences.task_index[batch]
                for t in task_names:
                    selected = tasks_in_batch == TASKS.index(t)
                    if selected.any():
                        rows.append({"step": step_offset + step, "stage": stage.name, "task": t,
                                     "loss": per_example[selected].mean().item()})
            rows.append({"step": step_offset + step, "stage": stage.name, "task": "all", "loss": loss.item()})
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if checkpoint and checkpoint.due(step, stage.steps - 1):
            checkpoint.save(stage.name, step + 1, model, optimizer, generator, rows)
    for p in model.parameters():
        p.requires_grad_(True)
    return rows


def answer_marker_ids(tokenizer) -> tuple[int, ...]:
    """The ids of the prompt template's " ASSISTANT:" (where an answer starts; models/routing.py):
    the tail the prompt adds after its question, checked to be the same after every task's question."""
    tails = set()
    for question in ("Describe this image.", "Is there a star in this image?", "What color is the circle?"):
        prompt = tokenizer(format_prompt(question), add_special_tokens=False)["input_ids"]
        head = tokenizer(format_prompt(question).rsplit(" ASSISTANT:", 1)[0], add_special_tokens=False)["input_ids"]
        if prompt[: len(head)] != head:
            raise ValueError(f"the tokenizer merges the answer marker into the question {question!r}")
        tails.add(tuple(prompt[len(head):]))
    if len(tails) != 1:
        raise ValueError(f"the answer marker tokenizes differently after different questions: {tails}")
    return tails.pop()


def _sequence_logits(model, data, input_ids, attention_mask, images, with_image, tower_features):
    """Logits of one training batch (text alone, images through the tower, or frozen tower features)."""
    if not with_image:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    if tower_features is None:
        return model(input_ids=input_ids, attention_mask=attention_mask,
                     pixel_values=data.pixel_values[images]).logits
    embeds = _embeds_with_image_features(model, input_ids, tower_features[images])
    return model(inputs_embeds=embeds, attention_mask=attention_mask).logits


@torch.no_grad()
def _frozen_tower_features(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor,
                           chunk: int = 256) -> torch.Tensor:
    """Selected (pre-projector) tower features of every training image, computed once."""
    tower = model.model.vision_tower
    was_training = tower.training
    tower.eval()
    features = torch.cat([_selected_patch_features(model, pixel_values[i:i + chunk])
                          for i in range(0, len(pixel_values), chunk)])
    tower.train(was_training)
    return features


def _embeds_with_image_features(model: LlavaForConditionalGeneration, input_ids: torch.Tensor,
                                tower_features: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the projected image features at the image-token positions (row-major,
    as LLaVA's own forward places them)."""
    embeds = model.get_input_embeddings()(input_ids)
    projected = model.model.multi_modal_projector(tower_features).to(embeds.dtype)
    image_mask = (input_ids == model.config.image_token_id).unsqueeze(-1)
    return embeds.masked_scatter(image_mask, projected.reshape(-1, projected.shape[-1]))


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each sequence's labelled (answer) tokens: shape (batch,)."""
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    token_loss = F.cross_entropy(shifted_logits.transpose(1, 2), shifted_labels, ignore_index=IGNORE_INDEX,
                                 reduction="none")
    counts = (shifted_labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return token_loss.sum(dim=1) / counts


def train_organism(spec: OrganismSpec, world_dir: Path, model_dir: Path,
                   checkpoint_dir: Path | None = None) -> pd.DataFrame:
    """Train the organism on ``world_dir``'s train split; write model + processor to ``model_dir``.

    Returns the tidy loss table (step, stage, task, loss). ``model_dir`` is replaced atomically and
    also receives ``organism.json`` (the spec, the world spec, sizes), ``losses.csv`` and
    ``timings.json`` (seconds per part: the only file that differs between identical runs).
    With ``checkpoint_dir``, training resumes from the checkpoint a killed run left there.
    """
    world_dir, model_dir = Path(world_dir), Path(model_dir)
    spec.validate()
    world = load_world_spec(world_dir)
    if world.image_size % spec.patch_size:
        raise ValueError(f"world image_size={world.image_size} ({world_dir}) is not a multiple of "
                         f"OrganismSpec.patch_size={spec.patch_size}")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(spec.num_threads)
    clock = _StageClock()
    try:
        torch.manual_seed(spec.seed)
        generator = torch.Generator().manual_seed(spec.seed)
        documents = training_documents(world_dir, training_scenes(world_dir, spec), world.shapes, spec.seed)
        processor = train_tokenizer(documents, spec, world.image_size, world.shapes, VQA_ANSWER_PREFIX)
        tokenizer = processor.tokenizer
        model = build_model(spec, vocab_size=len(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, image_size=world.image_size,
                            answer_marker=answer_marker_ids(tokenizer))
        data = prepare_training_data(processor, world_dir, spec, world.shapes, world.colors, documents)
        checkpoint = TrainingCheckpoint(checkpoint_dir, {"organism": spec.to_json(), "world": world.to_json(),
                                                         "torch": torch.__version__})
        resume = checkpoint.load()
        if resume:
            logging.getLogger(__name__).info("resuming training from its checkpoint: stage %s, step %d (%s)",
                                             resume["stage"], resume["next_step"], checkpoint.path)
            model.load_state_dict(resume["model"])
            generator.set_state(resume["generator"])
            torch.set_rng_state(resume["torch_rng"])
        clock.lap("prepare")
        resumed_stage = STAGES.index(resume["stage"]) if resume else 0
        rows = list(resume["rows"]) if resume else []
        if resumed_stage == 0:
            rows = train_vision_tower(model, data, spec, len(world.shapes), len(world.colors), generator,
                                      checkpoint=checkpoint, resume=resume)
            clock.lap("vision")
        step_offset = spec.vision_steps
        for index, stage in enumerate(sequence_stages(spec), start=1):
            if index >= resumed_stage:
                rows = train_sequences(model, data, spec, stage, generator, step_offset=step_offset, rows=rows,
                                       checkpoint=checkpoint, resume=resume if index == resumed_stage else None)
                clock.lap(stage.name)
            step_offset += stage.steps
    finally:
        torch.set_num_threads(threads_before)
    model.eval()
    losses = pd.DataFrame(rows, columns=LOSS_COLUMNS)
    n_params = sum(p.numel() for p in model.parameters())
    summary = {
        "organism_spec": spec.to_json(), "world_spec": world.to_json(), "parameters": n_params,
        "image_tokens": num_image_tokens(world.image_size, spec.patch_size), "vocabulary": len(tokenizer),
        "shape_pieces": {shape: name_pieces(tokenizer, shape) for shape in world.shapes},
        "color_pieces": {color: name_pieces(tokenizer, color) for color in world.colors},
        "train_images": int(len(data.pixel_values)), "train_examples": int(len(data.examples.input_ids)),
        "train_documents": int(len(data.documents.input_ids)),
    }
    seconds = clock.seconds(threads=spec.num_threads,
                            resumed_from=None if not resume else f"{resume['stage']} step {resume['next_step']}")
    with atomic_path(model_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json(summary, tmp / "organism.json")
        write_json({"seconds": seconds}, tmp / TIMINGS_FILE)
        losses.to_csv(tmp / "losses.csv", index=False)
    checkpoint.remove()
    return losses


class _StageClock:
    """Wall and CPU seconds (all threads) of each part of training; CPU time, unlike wall time, is
    not inflated by other processes on the machine."""

    def __init__(self):
        self.started = self.last = time.perf_counter()
        self.cpu_started = self.cpu_last = time.process_time()
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.wall[name], self.cpu[name] = round(now - self.last, 2), round(cpu - self.cpu_last, 2)
        self.last, self.cpu_last = now, cpu

    def seconds(self, **extra) -> dict:
        return {**self.wall, "total": round(self.last - self.started, 2),
                "cpu": self.cpu, "cpu_total": round(self.cpu_last - self.cpu_started, 2), **extra}


def load_training_summary(model_dir: Path) -> dict:
    """The ``organism.json`` a training run wrote (spec, world spec, parameter count, timings)."""
    path = Path(model_dir) / "organism.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {model_dir} a model dir written by train_organism?")
    return json.loads(path.read_text())


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("scale", 1.0)


def _quiet(make: Callable):
    """Call ``make`` with stdout silenced (pycocotools prints progress lines)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return make()
