"""N1 (Neo et al.): ablate image tokens and see whether the model still identifies the object.

    table = run_token_ablation(session, selection, AblationSpec(seed=0), cells=cells_by_image(table),
                               prompts=PromptSpec(), mean=load_mean_embedding(path))

Builds each image's conditions (token sets over its image tokens, seeded per image and condition)
and runs each setting as one engine call per image, every condition a batch row; the table has one
row per image x setting x question kind x condition. Protocol, conditions and columns:
docs/PROTOCOLS.md, "N1. Object-token ablation".
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vlminterp.batching import AdaptiveBatch
from vlminterp.data.coco import CocoDataset
from vlminterp.batching import AdaptiveBatch
from vlminterp.experiments.neo.prompts import (PromptSpec, question_image_ids,
                                               vqa_questions)
from vlminterp.experiments.shared.session import Session
from vlminterp.experiments.shared.cells import TargetCells
from vlminterp.geometry import random_cells
from vlminterp.interventions import Ablation, Condition
from vlminterp.interventions.engine import input_gradients
from vlminterp.models.adapters import answer_first_token
from vlminterp.scoring.pieces import first_pieces
from vlminterp.summaries import flip_summary  # noqa: F401  (its summary, shared with the figures)
from vlminterp.experiments.neo.specs import (  # noqa: F401  (the settings live in a light module)
    IG_CHOICES, AblationSpec)

log = logging.getLogger(__name__)

ABLATION_COLUMNS = [
    "image_id", "annotation_id", "category", "setting", "question_kind", "condition", "family", "buffer",
    "n_requested", "n_tokens", "replacement", "success", "baseline_success", "included", "flipped",
    "p_correct", "answer", "batch_size", "ig_batch_size", "oom_retries", "excluded",
]
_YES = re.compile(r"^\W*yes\b", re.IGNORECASE)
_NO = re.compile(r"^\W*no\b", re.IGNORECASE)


# ---- token sets -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenSet:
    """One ablation condition as a token set ((N,) bool, image-token order), with its bookkeeping."""

    condition: str
    family: str
    cells: np.ndarray
    buffer: int | None = None
    n_requested: int | None = None


def _rng(seed: int, image_id: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, image_id, *name.encode()])


def register_cells(embeddings: torch.Tensor, shape: tuple[int, ...], n_std: float) -> np.ndarray:
    """Tokens whose post-projector embedding norm exceeds mean + n_std * std of the image's norms,
    as an array of `shape` ((N,) token set, or a single grid's (rows, cols))."""
    norms = embeddings.float().norm(dim=-1).cpu().numpy()
    return (norms > norms.mean() + n_std * norms.std()).reshape(shape)


def integrated_gradients(adapter, inputs_embeds: torch.Tensor, image_positions: torch.Tensor, baseline_vector,
                         target_token: int, steps: int, batch_size: int | AdaptiveBatch, rope=None, *,
                         objective: str = "probability", points: str = "midpoint",
                         reduce: str = "sum") -> np.ndarray:
    """Integrated-gradient attribution of each image position to the target token at the last position.

    The baseline equals the input except at the image positions, which hold `baseline_vector`;
    the path integral uses `steps` points ("midpoint": (k + 0.5) / steps; "linspace": 0 .. 1 with
    both ends, the authors'), run `batch_size` at a time (an `AdaptiveBatch`: halved on CUDA
    out-of-memory; the gradients are summed one step at a time in step order, so the order of the
    sum does not depend on the batch size). `objective`: the target's "probability" or "logit".
    Returns, per image position, the attribution reduced over the hidden dimension: "sum" (its sign
    kept; IG completeness holds for it) or "sum_of_abs" (sum of |attribution|, the authors'
    ranking). `rope`: the input's `RopePositions` (needed by M-RoPE families such as Qwen2-VL;
    None = 0..T-1).
    """
    batches = batch_size if isinstance(batch_size, AdaptiveBatch) else AdaptiveBatch(batch_size, "integrated gradients")
    inputs = inputs_embeds.detach()
    baseline = inputs.clone()
    baseline[:, image_positions] = baseline_vector.to(inputs.device, inputs.dtype)
    delta = inputs - baseline
    if points == "midpoint":
        alphas = ((torch.arange(steps, dtype=torch.float32) + 0.5) / steps).tolist()
    elif points == "linspace":
        alphas = torch.linspace(0, 1, steps, dtype=torch.float32).tolist()
    else:
        raise ValueError(f"points must be 'midpoint' or 'linspace', got {points!r}")
    if objective not in ("probability", "logit") or reduce not in ("sum", "sum_of_abs"):
        raise ValueError(f"objective must be 'probability' or 'logit' and reduce 'sum' or 'sum_of_abs', "
                         f"got {objective!r}, {reduce!r}")

    def gradients(chunk: list[float]) -> torch.Tensor:
        a = torch.tensor(chunk, dtype=torch.float32).to(inputs.device, inputs.dtype)[:, None, None]
        grad = input_gradients(adapter, baseline + a * delta, target_token, objective=objective, rope=rope)
        return grad[:, image_positions].float()

    total = torch.zeros(len(image_positions), inputs.shape[-1], dtype=torch.float32, device=inputs.device)
    for grads in batches.iterate(alphas, gradients):
        for step_grad in grads:
            total += step_grad
    attribution = delta[0, image_positions].float() * total / steps
    return (attribution.abs() if reduce == "sum_of_abs" else attribution).sum(dim=-1).cpu().numpy()


def top_cells(scores: np.ndarray, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """The n tokens of largest |score| (ties broken by token order), as an array of `shape`."""
    order = np.argsort(-np.abs(scores), kind="stable")[:n]
    grid = np.zeros(int(np.prod(shape)), dtype=bool)
    grid[order] = True
    return grid.reshape(shape)


def token_sets(cells: TargetCells, spec: AblationSpec, register: np.ndarray | None,
               attribution: np.ndarray | None) -> list[TokenSet]:
    """Every ablation condition of one image (the `none` baseline excluded), in a fixed order."""
    total = cells.num_tokens
    shape = (total,)
    sets = [TokenSet(f"object_b{b}", "object", grid, b, int(grid.sum())) for b, grid in cells.object_b.items()]
    for b, grid in cells.object_b.items():
        n = int(grid.sum())
        if 0 < n <= total - n:
            name = f"random_matched_b{b}"
            draw = random_cells(shape, n, _rng(spec.seed, cells.image_id, name), exclude=grid)
            sets.append(TokenSet(name, "random_matched", draw, b, n))
    for n in sorted({min(n, total) for n in spec.random_counts}):
        name = f"random_n{n}"
        sets.append(TokenSet(name, "random", random_cells(shape, n, _rng(spec.seed, cells.image_id, name)), None, n))
    if register is not None and register.any():
        sets.append(TokenSet("register", "register", register, None, int(register.sum())))
    if attribution is not None:
        for b, grid in cells.object_b.items():
            n = int(grid.sum())
            if n:
                sets.append(TokenSet(f"high_gradient_b{b}", "high_gradient", top_cells(attribution, n, shape), b, n))
        for n in sorted({min(n, total) for n in spec.random_counts}):
            sets.append(TokenSet(f"high_gradient_n{n}", "high_gradient", top_cells(attribution, n, shape), None, n))
    sets.append(TokenSet("all_image", "all_image", np.ones(shape, dtype=bool), None, total))
    return sets


# ---- the experiment -----------------------------------------------------------------------------------
def _absent_category(dataset: CocoDataset, image_id: int, seed: int) -> str | None:
    present = dataset.image_categories(image_id)
    absent = [name for cid, name in dataset.category_names().items() if cid not in present]
    if not absent:
        return None
    return absent[int(_rng(seed, image_id, "absent").integers(len(absent)))]


def ig_target_input(session: Session, image, name: str, prompts: PromptSpec, spec: AblationSpec, vqa_input,
                    answer_token: int):
    """(prepared input, target token) of the integrated-gradient attribution (`AblationSpec.ig_target`):
    the VQA prompt and the name's first token, or the polling question and the first token of
    "Yes" after the assistant tag (the authors' code; its "Yes" id was in fact BOS, not copied)."""
    if spec.ig_target == "vqa_answer":
        return vqa_input, answer_token
    text = prompts.polling.format(name=name)
    prompt = session.adapter.format_prompt(text, session.prompt.system_prompt)
    yes = answer_first_token(session.tokenizer, prompt, "Yes")
    if yes == session.tokenizer.unk_token_id:
        raise ValueError(f"neo.ablation.ig_target: the tokenizer has no token for 'Yes' after {prompt!r}; "
                         "use ig_target: vqa_answer")
    return session.prepare(image, text), yes


def run_token_ablation(session: Session, selection: pd.DataFrame, spec: AblationSpec, *,
                       cells: dict[int, TargetCells], prompts: PromptSpec, mean: torch.Tensor) -> pd.DataFrame:
    """The N1 table: one row per image x setting x question kind x condition (module docstring)."""
    engine = session.engine  # opened with spec.batch_size (stages.token_ablation)
    ig_batches = AdaptiveBatch(spec.ig_batch_size, "N1 token ablation (integrated gradients)")
    adapter, dataset, tokenizer, vocabulary = session.adapter, session.dataset, session.tokenizer, session.vocabulary
    vector = mean if spec.replacement == "mean" else None
    questions = vqa_questions(dataset, selection, prompts)  # the IG target is the VQA answer
    vqa_images = question_image_ids(prompts)  # None: every target; else the VQA setting's images
    pieces = first_pieces(tokenizer, vocabulary, prompts.vqa_answer_prefix, dataset.category_names().values())
    rows: list[dict] = []
    for target in tqdm(list(selection.itertuples(index=False)), desc="token ablation", mininterval=5):
        image_id, name = int(target.image_id), str(target.category_name)
        target_cells = cells[image_id]
        if target_cells.excluded:
            log.info("image %s: target %s excluded (%s)", image_id, target.annotation_id, target_cells.excluded)
            rows.extend(excluded_rows(image_id, int(target.annotation_id), name, spec, target_cells.excluded,
                                      engine.batches.size, ig_batches.size))
            continue
        first_row, retries_before = len(rows), engine.batches.retries + ig_batches.retries
        image = dataset.load_image(image_id)
        answer_token = answer_first_token(tokenizer, prompts.vqa_answer_prefix, name)
        vqa_input = session.prepare(image, questions[image_id], answer_prefix=prompts.vqa_answer_prefix)
        (image_pos,) = adapter.image_positions(vqa_input.input_ids)
        target_cells.check_prompt(image_pos)
        register = register_cells(vqa_input.inputs_embeds[0, image_pos], (target_cells.num_tokens,), spec.register_std)
        ig_input, ig_token = ig_target_input(session, image, name, prompts, spec, vqa_input, answer_token)
        (ig_pos,) = adapter.image_positions(ig_input.input_ids)
        attribution = integrated_gradients(adapter, ig_input.inputs_embeds, ig_pos, mean, ig_token,
                                           spec.ig_steps, ig_batches, rope=ig_input.rope, objective=spec.ig_objective,
                                           points=spec.ig_points,
                                           reduce="sum_of_abs" if spec.ig_ranking == "sum_of_abs" else "sum")
        sets = token_sets(target_cells, spec, register, attribution)
        common = {"image_id": image_id, "annotation_id": int(target.annotation_id), "category": name,
                  "replacement": spec.replacement}

        def conditions_for(prepared) -> list[Condition]:
            (positions,) = adapter.image_positions(prepared.input_ids)
            return [Condition()] + [Condition(ablations=(Ablation(torch.as_tensor(target_cells.positions(s.cells, positions)),
                                                                  vector),), label=s.condition) for s in sets]

        def add_rows(setting: str, kind: str, successes: Sequence[bool], answers: Sequence[str],
                     p_correct: Sequence[float] | None = None) -> None:
            baseline = bool(successes[0])
            included = baseline and kind == "target"
            labels = [TokenSet("none", "none", np.zeros(target_cells.num_tokens, dtype=bool), None, 0)] + sets
            for index, (token_set, success, answer) in enumerate(zip(labels, successes, answers)):
                rows.append({**common, "setting": setting, "question_kind": kind, "condition": token_set.condition,
                             "family": token_set.family, "buffer": token_set.buffer,
                             "n_requested": token_set.n_requested, "n_tokens": int(token_set.cells.sum()),
                             "success": bool(success), "baseline_success": baseline, "included": included,
                             "flipped": bool(included and not success),
                             "p_correct": None if p_correct is None else float(p_correct[index]),
                             "answer": answer, "excluded": ""})

        unscorable = pieces.name_piece_problem(name)
        if "vqa" in spec.settings and (vqa_images is None or image_id in vqa_images) and unscorable:
            rows.extend(excluded_rows(image_id, int(target.annotation_id), name, spec, unscorable,
                                      engine.batches.size, ig_batches.size, settings=("vqa",)))
        elif "vqa" in spec.settings and (vqa_images is None or image_id in vqa_images):
            logits = engine.logits(vqa_input, conditions_for(vqa_input))[:, -1].float()
            probs = logits.softmax(dim=-1)
            top = logits.argmax(dim=-1).tolist()
            add_rows("vqa", "target", [t == answer_token for t in top],
                     [tokenizer.decode([t]) for t in top], probs[:, answer_token].tolist())
        # A question image kept without the noising test (`neo_screening`, screen = "exempt") is
        # there for the VQA setting only, as in the authors' runs.
        screened_out = getattr(target, "screen", "") == "exempt"
        if "polling" in spec.settings and not screened_out:
            asked = [("target", name, _YES)]
            absent = _absent_category(dataset, image_id, spec.seed)
            if absent is not None:
                asked.append(("absent", absent, _NO))
            for kind, polled, expected in asked:
                prepared = session.prepare(image, prompts.polling.format(name=polled))
                out = engine.generate(prepared, conditions_for(prepared), spec.answer_tokens)
                answers = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in out.tokens]
                add_rows("polling", kind, [bool(expected.match(a)) for a in answers], answers)
        if "generative" in spec.settings and not screened_out:
            prepared = session.prepare(image, prompts.describe)
            out = engine.generate(prepared, conditions_for(prepared), spec.description_tokens)
            answers = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in out.tokens]
            add_rows("generative", "target", [name in vocabulary.categories_in(a) for a in answers], answers)
        batching = {"batch_size": engine.batches.size, "ig_batch_size": ig_batches.size,
                    "oom_retries": engine.batches.retries + ig_batches.retries - retries_before}
        for row in rows[first_row:]:
            row.update(batching)
    table = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    return table.astype({"buffer": "Int64", "n_requested": "Int64"})


def excluded_rows(image_id: int, annotation_id: int, category: str, spec: AblationSpec, reason: str,
                  batch_size: int, ig_batch_size: int, settings: Sequence[str] | None = None) -> list[dict]:
    """The rows of a target excluded for `reason` (module docstring): one per setting (of
    `settings`, by default every setting of the run), nothing run."""
    return [{"image_id": image_id, "annotation_id": annotation_id, "category": category, "setting": setting,
             "question_kind": "target", "condition": "none", "family": "none", "buffer": None, "n_requested": 0,
             "n_tokens": 0, "replacement": spec.replacement, "success": False, "baseline_success": False,
             "included": False, "flipped": False, "p_correct": None, "answer": "", "batch_size": batch_size,
             "ig_batch_size": ig_batch_size, "oom_retries": 0, "excluded": reason}
            for setting in ("vqa", "polling", "generative")  # the run's order
            if setting in spec.settings and (settings is None or setting in settings)]
