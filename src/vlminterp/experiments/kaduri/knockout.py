"""K2 (Kaduri et al.): attention knockout between token groups, descriptions scored by a judge.

    table = group_knockouts(session, images, KnockoutSpec())   # one row per image x condition
    summary = summarize_knockouts(table, seed=0)                # F1 per condition with intervals

Builds the knockout conditions (`knockout_conditions`), runs all conditions of one image as ONE
engine call and scores each description with the offline judge (`scoring.judge`; the LLM judge
is rule judge_group_knockouts_llm). Protocol, conditions, judge and columns: docs/PROTOCOLS.md,
"K2. Attention knockout between token groups".
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vlminterp.batching import BATCH_COLUMNS
from vlminterp.scoring.judge import SCORE_COLUMNS, judge_table
from vlminterp.scoring.vocabulary import SynonymVocabulary
from vlminterp.stats import bootstrap_ci
from vlminterp.experiments.kaduri.specs import (  # noqa: F401  (the settings live in a light module)
    TARGETS, SWEEP_LAYERS, LLMJudgeConfig, KnockoutSpec)

if TYPE_CHECKING:  # the model's libraries: imported where a function runs the model (the summaries need none)
    from vlminterp.experiments.shared.session import Session
    from vlminterp.interventions import Condition, Knockout
    from vlminterp.models.adapters import TokenGroups

log = logging.getLogger(__name__)

MAIN_CONDITIONS = ("none", "image->generated", "image->query", "image->query+generated")
KNOCKOUT_COLUMNS = ("image_id", "condition", "family", "target", "layer_start", "layer_end", "n_layers",
                    "description", "n_generated", "reference")


#: Kaduri et al.'s window for LLaVA-1.5 (32 layers): the image visible in layers 4..20, as fractions.
AUTHORS_WINDOW = (0.125, 0.65625)


@dataclass(frozen=True)
class KnockoutCondition:
    label: str
    family: str
    target: str
    layer_start: int
    layer_end: int
    condition: Condition


def window_grid(n_layers: int, step: int) -> list[tuple[int, int]]:
    """Windows [a, b]: a in 0, s, 2s, ...; b in s-1, 2s-1, ..., and always L-1; a <= b."""
    if step <= 0:
        return []
    starts = list(range(0, n_layers, step))
    ends = sorted(set(range(step - 1, n_layers, step)) | {n_layers - 1})
    return [(a, b) for a in starts for b in ends if b >= a]


def _blocks(target: str, groups: TokenGroups, layers) -> tuple[Knockout, ...]:
    from vlminterp.interventions import From, Knockout

    image = list(groups.image_span)
    out = []
    if target in ("query", "query+generated"):
        out.append(Knockout(list(groups.query), image, layers=layers))
    if target in ("generated", "query+generated"):
        out.append(Knockout(From(groups.prompt_length), image, layers=layers))
    return tuple(out)


def knockout_conditions(groups: TokenGroups, n_layers: int, spec: KnockoutSpec) -> list[KnockoutCondition]:
    """Every K2 condition for one prompt (module docstring), `none` first."""
    from vlminterp.experiments.shared.layers import fraction_window
    from vlminterp.interventions import Condition

    last = n_layers - 1
    out = [KnockoutCondition("none", "none", "", -1, -1, Condition(label="none"))]
    for target in TARGETS:
        label = f"image->{target}"
        out.append(KnockoutCondition(label, "all_layers", target, 0, last,
                                     Condition(knockouts=_blocks(target, groups, None), label=label)))
    windows = [("window", a, b) for a, b in window_grid(n_layers, spec.window_step)]
    for start, end in spec.fixed_windows:
        visible = fraction_window(n_layers, start, end)
        windows.append(("fixed_window", visible[0], visible[-1]))
    for family, a, b in windows:
        hidden = [l for l in range(n_layers) if not a <= l <= b]
        for target in spec.window_targets:
            label = f"{'window' if family == 'window' else 'fixed'} {a}-{b} ({target})"
            out.append(KnockoutCondition(label, family, target, a, b,
                                         Condition(knockouts=_blocks(target, groups, hidden), label=label)))
    if spec.start_layer_step > 0:
        for l in range(0, n_layers, spec.start_layer_step):
            first = l + 1 if spec.sweep_layers == "after_l" else l
            if first >= n_layers:
                continue  # blocks no layer: the unablated description
            label = f"{'after' if spec.sweep_layers == 'after_l' else 'from'} {l}"
            out.append(KnockoutCondition(label, "from_layer", spec.sweep_target, first, last, Condition(
                knockouts=_blocks(spec.sweep_target, groups, list(range(first, n_layers))), label=label)))
    return out


def image_knockouts(session: Session, image_id: int, spec: KnockoutSpec) -> list[dict]:
    """Unjudged rows of the K2 table for one image: every condition decoded as one engine batch."""
    item = session.encode(image_id)
    conditions = knockout_conditions(item.groups, session.adapter.n_layers, spec)
    output = session.engine.generate(item.prepared, [c.condition for c in conditions], session.prompt.description_tokens,
                                     session.eos_token_ids)
    texts = [session.decode(tokens) for tokens in output.tokens]
    reference = texts[0]
    return [{"image_id": int(image_id), "condition": c.label, "family": c.family, "target": c.target,
             "layer_start": c.layer_start, "layer_end": c.layer_end, "n_layers": session.adapter.n_layers,
             "description": text, "n_generated": len(tokens), "reference": reference}
            for c, text, tokens in zip(conditions, texts, output.tokens)]


def judge_knockouts(table: pd.DataFrame, vocabulary: SynonymVocabulary, categories: pd.Series) -> pd.DataFrame:
    """Add the offline judge's scores against the reference and (gt_*) against the annotations."""
    judged = judge_table(table, "description", "reference", vocabulary)
    truth = table[["description"]].assign(categories=categories.to_numpy())
    gt = judge_table(truth, "description", "categories", vocabulary, reference_kind="categories")
    gt = gt[list(SCORE_COLUMNS)].rename(columns={c: f"gt_{c}" for c in SCORE_COLUMNS})
    return pd.concat([judged, gt, truth[["categories"]]], axis=1)


def group_knockouts(session: Session, images: pd.DataFrame, spec: KnockoutSpec) -> pd.DataFrame:
    """The judged K2 table (module docstring) for every image of `images` (image_id, categories),
    judged with the session's vocabulary."""
    rows, truth = [], []
    categories = dict(zip(images["image_id"].astype(int), images["categories"].fillna("")))
    batches = session.engine.batches
    batches.stage = "K2 group knockouts"
    for n, image_id in enumerate(images["image_id"].astype(int), 1):
        retries_before = batches.retries
        image_rows = image_knockouts(session, image_id, spec)
        batching = batches.columns(since=retries_before)
        rows.extend({**row, **batching} for row in image_rows)
        truth.extend([categories[image_id]] * len(image_rows))
        log.info("K2: image %d/%d (id %s): %d conditions", n, len(images), image_id, len(image_rows))
    table = pd.DataFrame(rows, columns=[*KNOCKOUT_COLUMNS, *BATCH_COLUMNS])
    return judge_knockouts(table, session.vocabulary, pd.Series(truth, dtype=object))


def chance_recall(n_named: float, n_categories: int) -> float:
    """Expected recall of a description naming `n_named` distinct uniformly random categories."""
    if n_categories < 1:
        raise ValueError("n_categories must be >= 1")
    return float(min(max(n_named, 0.0), n_categories) / n_categories)


SUMMARY_COLUMNS = ("condition", "family", "target", "layer_start", "layer_end", "mean", "low", "high", "recall",
                   "precision", "n_images", "gt_f1")


def summarize_knockouts(table: pd.DataFrame, seed: int = 0, score: str = "f1",
                        require_reference: bool = True) -> pd.DataFrame:
    """Per condition: mean `score`, recall, precision and gt_f1, with a bootstrap 95% interval of
    the mean `score`, over images whose reference names at least one object (all images with
    `require_reference=False`)."""
    data = table[table["n_reference"] > 0] if require_reference else table
    data = data.assign(target=data["target"].fillna(""))  # "" reads back from CSV as NaN
    rows = []
    keys = ["condition", "family", "target", "layer_start", "layer_end"]
    for key, part in data.groupby(keys, sort=False, dropna=False):
        low, high = bootstrap_ci(part[score].to_numpy(dtype=float), seed=seed)
        row = dict(zip(keys, key))
        row.update({"mean": float(part[score].mean()), "low": low, "high": high,
                    "recall": float(part["recall"].mean()), "precision": float(part["precision"].mean()),
                    "n_images": int(part["image_id"].nunique())})
        row["gt_f1"] = float(part["gt_f1"].mean()) if "gt_f1" in part else float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def recall_by_category(judged: pd.DataFrame) -> pd.DataFrame:
    """K2 per condition and category: the share of images whose unablated description names the
    category in which the condition's description still names it (recall per category; the
    judge's `matched` / `missed` lists); columns condition, category, value, n, n_images."""
    def named(value) -> set[str]:
        return {c for c in value.split(";") if c} if isinstance(value, str) else set()

    rows = []
    for condition in sorted(set(judged["condition"])):
        part = judged[judged["condition"] == condition].drop_duplicates("image_id")
        kept: dict[str, list[float]] = {}
        for matched, missed in zip(part["matched"], part["missed"]):
            for category in named(matched) | named(missed):
                kept.setdefault(category, []).append(float(category in named(matched)))
        rows.extend({"condition": condition, "category": category, "value": float(np.mean(values)),
                     "n": len(values), "n_images": len(values)} for category, values in sorted(kept.items()))
    return pd.DataFrame(rows, columns=["condition", "category", "value", "n", "n_images"])


def llm_judge_knockouts(table: pd.DataFrame, judge_spec, vocabulary: SynonymVocabulary) -> pd.DataFrame:
    """Score the same generations with the optional LLM judge (`scoring.llm_judge.LLMJudge`):
    the K2 table's condition columns plus LLM_SCORE_COLUMNS (one request per distinct text, cached)."""
    from vlminterp.scoring.llm_judge import LLMJudge

    base = table[list(KNOCKOUT_COLUMNS)].copy()
    for column in ("description", "reference"):
        base[column] = base[column].fillna("")
    with LLMJudge(judge_spec, vocabulary=vocabulary) as judge:
        return judge.judge_table(base, "description", "reference")


def knockout_chance(table: pd.DataFrame, n_categories: int, condition: str = "image->query+generated") -> float:
    """Chance recall for `condition`: `chance_recall` of the mean number of distinct categories its
    descriptions name (a description of that length naming categories at random). With the image cut
    off from every token the description no longer depends on the image, so its recall against
    the images' references should match this."""
    part = table[table["condition"] == condition]
    if part.empty:
        return float("nan")
    return chance_recall(float(part["n_candidate"].mean()), n_categories)
