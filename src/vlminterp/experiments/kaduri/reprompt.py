"""K4 (Kaduri et al.): answer new questions from a compressed cache of the describe prompt.

    questions = build_pope_questions(dataset, image_ids, n_per_image=3, seed=0)
    table = reprompting(session, images, RepromptSpec(), questions=questions)   # question x method (x k)
    summary = summarize_reprompting(table)          # accuracy, POPE F1, yes-ratio, context

Runs each image's describe prompt once (its KV cache kept, its description generated, the
attention each image token received ranked per layer), builds each method's cache and answers
the questions of one token length as one batch (`InterventionEngine.continue_cache`). Protocol,
methods and columns: docs/PROTOCOLS.md, "K4. Re-prompting from a compressed cache".
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vlminterp.data.questions import NEGATIVE_STRATEGIES
from vlminterp.batching import BATCH_COLUMNS
from vlminterp.batching import no_grad
from vlminterp.stats import cluster_bootstrap_ci
from vlminterp.summaries import method_label
from vlminterp.experiments.kaduri.specs import (  # noqa: F401  (the settings live in a light module)
    TOPK_POSITION_METHODS, RepromptSpec)

if TYPE_CHECKING:  # loads torch and transformers: the stage's functions get an open session
    import torch

    from vlminterp.experiments.shared.session import Session

log = logging.getLogger(__name__)

REPROMPT_COLUMNS = ("image_id", "question_id", "question", "category", "answer", "negative_type", "method",
                    "k_fraction", "k_tokens", "context_tokens", "input_tokens", "response", "predicted", "correct")


def top_k_count(fraction: float, n_image: int) -> int:
    """Image tokens kept for a fraction: floor(f * n) as the authors' `int(k * n)`, at least 1, at most n."""
    return int(min(n_image, max(1, int(fraction * n_image))))


def parse_yes_no(response: str) -> str:
    """"yes" / "no" from the first word of an answer (case and punctuation ignored), else "other"."""
    words = response.strip().split()
    first = words[0].strip(".,!?;:'\"").lower() if words else ""
    return first if first in ("yes", "no") else "other"


def top_image_positions(received: list[torch.Tensor], image_positions, k: int) -> list[list[int]]:
    """Per layer, the k image positions with the most received attention (ties: earlier token)."""
    image = list(image_positions)
    out = []
    for per_head in received:
        score = per_head.double().mean(dim=0).numpy()
        order = np.argsort(-score, kind="stable")[:k]
        out.append(sorted(image[int(i)] for i in order))
    return out


@no_grad
def image_reprompting(session: Session, image_id: int, questions: pd.DataFrame, spec: RepromptSpec) -> list[dict]:
    """Rows of the K4 table for one image and its questions."""
    engine, adapter = session.engine, session.adapter
    item = session.encode(image_id)
    groups, P = item.groups, item.prompt_length
    generated = session.describe(item)
    description = session.decode(generated).strip()
    record = session.description_attention(item, generated)
    received = [record.image_received[layer] for layer in range(adapter.n_layers)]
    prompt_positions = sorted(groups.system + groups.query)
    n_image = len(groups.image)
    selections = {("full_cache", None): list(range(P)), ("prompt_cache", None): prompt_positions}
    for fraction in spec.top_k_fractions:
        top = top_image_positions(received, groups.image, top_k_count(fraction, n_image))
        for position in spec.image_topk_positions:
            selections[(TOPK_POSITION_METHODS[position], fraction)] = top
        selections[("prompt_image_topk", fraction)] = [sorted(prompt_positions + t) for t in top]
    after_kept = {key for key in selections if key[0] == TOPK_POSITION_METHODS["after_kept"]}
    kept = engine.kept_caches(item.prepared, selections, continue_after_kept=after_kept)

    eos = session.eos_token_ids
    question_list = list(questions.itertuples(index=False))
    continuations = [session.tokenize(spec.continuation.format(question=q.question), bos=False) for q in question_list]
    answers: dict[int, dict] = {i: {} for i in range(len(question_list))}
    # Cache methods: the questions of one token length are one batch per kept cache.
    for key, cache_kept in kept.items():
        answered = engine.continue_cache(cache_kept, continuations, spec.answer_tokens, eos)
        for i, tokens in enumerate(answered):
            answers[i][key] = (tokens, cache_kept.width, cache_kept.width + continuations[i].shape[1])
    for i, q in enumerate(question_list):
        new_ids = continuations[i]
        # full_image: the describe prompt and the question as one ordinary input (no cache surgery;
        # the image features are reused, the language model runs from scratch).
        tokens = engine.generate(engine.extend(item.prepared, new_ids), [None], spec.answer_tokens, eos).tokens[0]
        answers[i][("full_image", None)] = (tokens, P, P + new_ids.shape[1])
        text_prompt = adapter.format_text_prompt(q.question, description, session.prompt.system_prompt)
        text_ids = session.tokenize(text_prompt, bos=True)
        context = session.tokenize(text_prompt[: text_prompt.rindex(q.question)].rstrip(), bos=True).shape[1]
        tokens = engine.generate(engine.prepare(text_ids), [None], spec.answer_tokens, eos).tokens[0]
        answers[i][("description_text", None)] = (tokens, context, text_ids.shape[1])
        single = session.encode(image_id, text=adapter.format_prompt(q.question, session.prompt.system_prompt))
        tokens = engine.generate(single.prepared, [None], spec.answer_tokens, eos).tokens[0]
        answers[i][("single_turn", None)] = (tokens, len(single.groups.system) + len(single.groups.image_span),
                                             single.prompt_length)

    rows = []
    order = [("single_turn", None), ("full_image", None), *kept, ("description_text", None)]
    for i, q in enumerate(question_list):
        for method, fraction in order:
            tokens, context_tokens, input_tokens = answers[i][(method, fraction)]
            response = session.decode(tokens).strip()
            predicted = parse_yes_no(response)
            rows.append({"image_id": int(image_id), "question_id": int(q.question_id), "question": q.question,
                         "category": q.category, "answer": q.answer, "negative_type": q.negative_type,
                         "method": method, "k_fraction": np.nan if fraction is None else float(fraction),
                         "k_tokens": -1 if fraction is None else top_k_count(fraction, n_image),
                         "context_tokens": int(context_tokens), "input_tokens": int(input_tokens),
                         "response": response, "predicted": predicted, "correct": predicted == q.answer})
    return rows


def reprompting(session: Session, images: pd.DataFrame, spec: RepromptSpec, *,
                questions: pd.DataFrame) -> pd.DataFrame:
    """The K4 table (module docstring) for every image of `images` with its rows of `questions`."""
    rows = []
    by_image = {int(i): part for i, part in questions.groupby("image_id", sort=False)}
    batches = session.engine.batches
    batches.stage = "K4 re-prompting"
    for n, image_id in enumerate(images["image_id"].astype(int), 1):
        if image_id not in by_image:
            continue
        retries_before = batches.retries
        image_rows = image_reprompting(session, image_id, by_image[image_id], spec)
        batching = batches.columns(since=retries_before)
        rows.extend({**row, **batching} for row in image_rows)
        log.info("K4: image %d/%d (id %s): %d questions", n, len(images), image_id, len(by_image[image_id]))
    return pd.DataFrame(rows, columns=[*REPROMPT_COLUMNS, *BATCH_COLUMNS])


def pope_scores(truth: pd.Series, predicted: pd.Series) -> dict[str, float]:
    """Accuracy, POPE precision/recall/F1 ("yes" is the positive class; "other" counts as not yes)
    and yes-ratio."""
    yes_true, yes_pred = truth.eq("yes").to_numpy(), predicted.eq("yes").to_numpy()
    tp = float(np.sum(yes_true & yes_pred))
    precision = tp / yes_pred.sum() if yes_pred.sum() else 0.0
    recall = tp / yes_true.sum() if yes_true.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float(np.mean(truth.to_numpy() == predicted.to_numpy())), "precision": precision,
            "recall": recall, "f1": f1, "yes_ratio": float(yes_pred.mean()) if len(yes_pred) else float("nan")}


#: The summary's settings: each POPE strategy (its positives plus its negatives, balanced: k "yes"
#: and k "no" per image, no question twice) and MEAN_SETTING, the mean of the three.
MEAN_SETTING = "mean"
SUMMARY_SETTINGS = (*NEGATIVE_STRATEGIES, MEAN_SETTING)


def setting_weights(table: pd.DataFrame, setting: str) -> pd.Series:
    """Each question's weight in a setting: a strategy keeps its positives and its own negatives
    (weight 1, others 0); MEAN_SETTING weighs the positives 1 and every negative 1/3, so that its
    weighted accuracy is exactly the mean of the three strategies' accuracies (each strategy has
    as many negatives as positives per image)."""
    negative = table["negative_type"]
    if setting == MEAN_SETTING:
        return negative.map(lambda t: 1.0 if t == "positive" else 1.0 / len(NEGATIVE_STRATEGIES)).astype(float)
    if setting not in NEGATIVE_STRATEGIES:
        raise ValueError(f"setting must be one of {SUMMARY_SETTINGS}, got {setting!r}")
    return negative.isin(["positive", setting]).astype(float)


def weighted_pope_scores(truth: pd.Series, predicted: pd.Series, weight: pd.Series) -> dict[str, float]:
    """`pope_scores` with a weight per question (`setting_weights`)."""
    w = weight.to_numpy(dtype=float)
    yes_true, yes_pred = truth.eq("yes").to_numpy(), predicted.eq("yes").to_numpy()
    tp, n_pred, n_true = (float(np.sum(w * m)) for m in (yes_true & yes_pred, yes_pred, yes_true))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = float(w.sum())
    return {"accuracy": float(np.sum(w * (truth.to_numpy() == predicted.to_numpy())) / total),
            "precision": precision, "recall": recall, "f1": f1, "yes_ratio": n_pred / total,
            "truth_yes_share": n_true / total}


def summarize_reprompting(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per method (and k) and setting (`SUMMARY_SETTINGS`: each POPE strategy, balanced, and their
    mean): accuracy with a bootstrap 95% interval resampling images (an image's questions are not
    independent), POPE precision/recall/F1, yes-ratio, the share of "yes" among the true answers
    (`truth_yes_share`, 0.5 on a balanced set), mean context and input tokens, share of unparsed
    answers, questions and images. Questions are never pooled across strategies: the pooled set
    repeats questions (a category can be both a random and a popular negative) and is 1/4 "yes",
    so an always-"no" answerer would score 75% on it."""
    rows = []
    for setting in SUMMARY_SETTINGS:
        weights = setting_weights(table, setting)
        for (method, fraction), part in table[weights > 0].groupby(["method", "k_fraction"], sort=False,
                                                                   dropna=False):
            if part.empty:
                continue
            weight = weights.loc[part.index]
            low, high = cluster_bootstrap_ci(part["correct"].to_numpy(dtype=float), part["image_id"].to_numpy(),
                                             seed=seed, weights=weight.to_numpy())
            rows.append({"method": method, "k_fraction": fraction, "label": method_label(method, fraction),
                         "setting": setting, **weighted_pope_scores(part["answer"], part["predicted"], weight),
                         "accuracy_low": low, "accuracy_high": high,
                         "k_tokens": int(part["k_tokens"].iloc[0]),
                         "context_tokens": float(part["context_tokens"].mean()),
                         "input_tokens": float(part["input_tokens"].mean()),
                         "other_ratio": float(part["predicted"].eq("other").mean()), "n_questions": int(part["question_id"].nunique()),
                         "n_images": int(part["image_id"].nunique())})
    return pd.DataFrame(rows)


def accuracy_by_category(table: pd.DataFrame) -> pd.DataFrame:
    """K4 accuracy per POPE strategy (its positives and its own negatives), method (and k) and
    asked category; columns setting, method, condition (`summaries.method_label`), category,
    value, n (questions), n_images."""
    rows = []
    for setting in SUMMARY_SETTINGS[:-1]:
        part = table[setting_weights(table, setting) > 0]
        for (method, fraction, category), group in part.groupby(["method", "k_fraction", "category"], dropna=False):
            rows.append({"setting": setting, "method": method, "condition": method_label(method, fraction),
                         "category": category, "value": float(group["correct"].astype(float).mean()),
                         "n": len(group), "n_images": int(group["image_id"].nunique())})
    return pd.DataFrame(rows, columns=["setting", "method", "condition", "category", "value", "n", "n_images"])
