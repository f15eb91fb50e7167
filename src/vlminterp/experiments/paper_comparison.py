"""The papers' headline numbers beside this run's, with 95% intervals and a null control each
(results/<run>/papers/paper_comparison.csv), and their per-category breakdown (by_category.csv).

    tables = RunTables(ablation=..., knockout=..., localization=..., reprompt=...)   # the run's own tables
    table = paper_comparison(tables, model="llava-hf/llava-1.5-7b-hf", organism=False, seed=0)
    breakdown = by_category(tables, seed=0)

One row per headline claim of Neo et al. (N1) and Kaduri et al. (K2-K4), this run's number read
from its own tables as its summaries compute it. Claims, sources, controls and columns:
docs/PROTOCOLS.md, the paper comparison.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vlminterp.experiments import controls
from vlminterp.experiments.kaduri.knockout import summarize_knockouts
from vlminterp.experiments.kaduri.localization import MEAN_HEAD, summarize_localization
from vlminterp.experiments.kaduri.reprompt import (MEAN_SETTING, SUMMARY_SETTINGS, setting_weights,
                                                   summarize_reprompting)
from vlminterp.summaries import flip_summary
from vlminterp.scoring.vocabulary import SynonymVocabulary
from vlminterp.stats import cluster_bootstrap_ci
from vlminterp.summaries import random_control

COLUMNS = ("paper", "experiment", "claim", "paper_model", "paper_setting", "paper_value", "relation", "source",
           "model", "setting", "condition", "measure", "value", "low", "high", "n", "control", "control_value",
           "control_low", "control_high", "chance", "flag", "note")
BREAKDOWN_COLUMNS = ("experiment", "setting", "condition", "category", "value", "n", "n_images")
NEO, KADURI = "Neo et al. (ICLR 2025)", "Kaduri et al. (CVPR 2025)"
NEO_MODEL, NEO_DATA = "LLaVA-1.5-7B", "COCO 2017 train, targets of 1000-2000 px^2"
INTERNVL = "InternVL2-76B"
NEO_ABSTRACT = "Neo et al., abstract (arXiv 2410.07149): object identification accuracy drops by over 70%"
UNSOURCED = ("unsourced: not in the paper's abstract nor in the authors' repository; a secondary reading, "
             "not checked against the paper's text")
#: Kaduri et al.'s K3 bands (10 layers of InternVL2-76B's 80 each): accuracy from a secondary
#: reading of their figure, unverified (relation "~", source UNSOURCED).
K3_BANDS = ((0, 0.30), (1, 0.45), (2, 0.65), (3, 0.73), (4, 0.60))
ORGANISM_NOTE = ("the organism is not LLaVA: a LLaVA-architecture model of about a million parameters trained on "
                 "the shapes world; it shows the method, not the papers' models")
NO_CONTROL = {"control": "", "control_value": np.nan, "control_low": np.nan, "control_high": np.nan,
              "chance": np.nan}


@dataclass
class RunTables:
    """This run's tables: N1's ablation.csv, K2's descriptions.csv (judged), K3's peaks.csv, K4's
    answers.csv; knockout_llm: the LLM judge's table of K2 when it ran (judge_model names it);
    vocabulary: N1's (neo.vocabulary; without it the generative rows have no control)."""

    ablation: pd.DataFrame
    knockout: pd.DataFrame
    localization: pd.DataFrame
    reprompt: pd.DataFrame
    knockout_llm: pd.DataFrame | None = None
    judge_model: str = ""
    vocabulary: SynonymVocabulary | None = None


def _row(paper, experiment, claim, paper_model, paper_setting, paper_value, relation, source, setting, condition,
         measure, value=np.nan, low=np.nan, high=np.nan, n=0, control=None, note="",
         control_sets_chance=False) -> dict:
    control = dict(NO_CONTROL if control is None else control)
    flag = controls.flag(control, float(low), float(high), control_sets_chance=control_sets_chance) \
        if control.get("control") else ""
    return {"paper": paper, "experiment": experiment, "claim": claim, "paper_model": paper_model,
            "paper_setting": paper_setting, "paper_value": paper_value, "relation": relation, "source": source,
            "setting": setting, "condition": condition, "measure": measure, "value": float(value),
            "low": float(low), "high": float(high), "n": int(n), **control, "flag": flag, "note": note}


# ---- N1 -------------------------------------------------------------------------------------------
def _polling_control(ablation: pd.DataFrame, seed: int) -> dict:
    """Always-yes / always-no on the unablated polling questions (target: "yes", absent: "no").
    The answer prior needs the absent category's name, which the N1 table does not keep."""
    rows = ablation[(ablation["setting"] == "polling") & (ablation["condition"] == "none")]
    if "excluded" in rows:
        rows = rows[rows["excluded"].fillna("") == ""]
    questions = pd.DataFrame({"image_id": rows["image_id"].to_numpy(),
                              "category": rows["question_kind"].to_numpy(),  # no category: the prior is off
                              "answer": np.where(rows["question_kind"].eq("target"), "yes", "no")})
    table = controls.blind_answerers(questions, seed=seed)
    table = table[table["answerer"] != "answer_prior"]
    if table.empty or table["accuracy"].isna().all():
        return {**NO_CONTROL, "control": "always-yes / always-no: no polling questions"}
    best = table.loc[table["accuracy"].idxmax()]
    summary = ", ".join(f"{r.answerer} {r.accuracy:.3f}" for r in table.itertuples())
    return {"control": f"best blind answerer on the unablated polling questions ({summary})",
            "control_value": float(best["accuracy"]), "control_low": float(best["low"]),
            "control_high": float(best["high"]), "chance": 0.5}


def _n1_controls(ablation: pd.DataFrame, vocabulary: SynonymVocabulary | None, seed: int, setting: str,
                 base: str):
    """condition -> the control of the setting's rows (module docstring); `base`: the generative
    rows' chance (`summaries.random_control`)."""
    if setting == "polling":
        control = _polling_control(ablation, seed)
        return lambda condition: control
    if setting == "vqa":
        control = controls.image_blind_vqa(ablation, seed=seed)
        return lambda condition: control
    if vocabulary is None:
        return lambda condition: {**NO_CONTROL, "control": "permuted labels: no vocabulary to read the descriptions"}
    flips = controls.permuted_mention_flips(ablation, vocabulary.categories_in, seed=seed)
    return lambda condition: controls.mention_control(flips, condition, base)


def _n1_rows(ablation: pd.DataFrame, seed: int, vocabulary: SynonymVocabulary | None = None) -> list[dict]:
    summary = flip_summary(ablation, seed=seed)
    rows = []
    for setting in ("generative", "polling", "vqa"):
        part = summary[summary["setting"] == setting].set_index("condition")
        buffers = sorted(int(c.rsplit("_b", 1)[1]) for c in part.index if c.startswith("object_b"))
        buffer = 1 if 1 in buffers else (buffers[0] if buffers else 0)
        control_of = _n1_controls(ablation, vocabulary, seed, setting, random_control(part, buffer))
        claims = [(f"object_b{buffer}", "ablating the object's tokens flips over 70% of correct answers", 0.70, ">",
                   NEO_ABSTRACT),
                  (f"random_matched_b{buffer}", "far fewer flips for as many random tokens", np.nan, "", UNSOURCED),
                  ("register", "far fewer flips for high-norm (register) tokens", np.nan, "", UNSOURCED),
                  (f"high_gradient_b{buffer}", "far fewer flips for as many high-gradient tokens", np.nan, "",
                   UNSOURCED)]
        for condition, claim, value, relation, source in claims:
            base = (NEO, "N1", claim, NEO_MODEL, f"{NEO_DATA}; {setting}", value, relation, source, setting, condition,
                    "share of correct unablated answers that the ablation flips")
            if condition in part.index:
                got = part.loc[condition]
                rows.append(_row(*base, got["mean"], got["low"], got["high"], got["n"], control=control_of(condition)))
            else:
                rows.append(_row(*base, control=control_of(condition),
                                 note=f"no {condition} rows in this run's N1 table"))
    return rows


# ---- K2 -------------------------------------------------------------------------------------------
def _k2_judged(tables: RunTables) -> tuple[pd.DataFrame, str, str]:
    """(the judged K2 table the rows read, measure, note): the LLM judge's when it ran."""
    if tables.knockout_llm is not None and len(tables.knockout_llm):
        model = tables.judge_model or "LLM"
        return (tables.knockout_llm, f"F1 of the objects the LLM judge ({model}) lists, vs the unablated description",
                "")
    return (tables.knockout,
            "F1 of COCO-category mentions (offline synonym judge), vs the unablated description",
            "offline judge: F1 over the dataset's categories, not the paper's F1 over free-form objects listed by "
            "GPT-4o; enable kaduri.llm_judge for the paper's measure")


def _k2_rows(tables: RunTables, seed: int) -> list[dict]:
    judged, measure, judge_note = _k2_judged(tables)
    summary = summarize_knockouts(judged, seed=seed)
    target = summary["target"].fillna("")
    fixed = summary[(summary["family"] == "fixed_window") & (target == "generated")]
    window = (f"fixed {int(fixed['layer_start'].iloc[0])}-{int(fixed['layer_end'].iloc[0])} (generated)"
              if len(fixed) else "fixed window (generated)")
    claims = [("image->generated", "the generated tokens never see the image, all layers: partial description",
               0.40, "=", INTERNVL, "describe prompt, GPT-4o judge, F1 of objects vs the unablated description"),
              ("image->query", "the query never sees the image, all layers: no description left", 0.0, "=", INTERNVL,
               "describe prompt, GPT-4o judge, F1 of objects vs the unablated description"),
              (window, "the image visible to the generated tokens only in a window of middle layers keeps most of "
                       "the description", np.nan, "", "LLaVA-1.5-7B",
               "describe prompt; the authors' LLaVA-1.5 code: image visible in layers 4-20 of 32 (17 layers, "
               "about half the depth)")]
    rows = []
    for condition, claim, value, relation, paper_model, paper_setting in claims:
        control = controls.category_blind_f1(judged, condition, seed=seed) if condition in set(judged["condition"]) \
            else None
        base = (KADURI, "K2", claim, paper_model, paper_setting, value, relation,
                UNSOURCED if not np.isnan(value) else "the authors' code (OmriKaduri/vlm-interp): the 4-20 window",
                "describe, F1 vs unablated", condition, measure)
        part = summary[summary["condition"] == condition]
        if len(part):
            got = part.iloc[0]
            rows.append(_row(*base, got["mean"], got["low"], got["high"], got["n_images"], control=control,
                             note=judge_note, control_sets_chance=True))
        else:
            rows.append(_row(*base, note=f"no {condition} condition in this run's K2 table"))
    return rows


# ---- K3 -------------------------------------------------------------------------------------------
def _k3_rows(peaks: pd.DataFrame, seed: int) -> list[dict]:
    """Accuracy over the run's layers lying in the same fraction of the depth as each paper band."""
    data = peaks[peaks["layer"] >= 0] if "layer" in peaks else peaks
    n_layers = int(data["layer"].max()) + 1 if len(data) else 0
    rows = []
    for band, value in K3_BANDS:
        layers = [l for l in range(n_layers) if band * n_layers <= 8 * l < (band + 1) * n_layers]
        claim = f"attention of generated object words peaks on the object, layers {10 * band}-{10 * band + 9} of 80"
        base = (KADURI, "K3", claim, INTERNVL, "describe prompt, SAM masks, peak within about one token", value, "~",
                UNSOURCED, f"layers {layers[0]}-{layers[-1]} of {n_layers}" if layers else f"none of {n_layers} layers",
                "peak cell on the object", "share of object mentions whose attention peak lies on the object")
        part = peaks[peaks["layer"].isin(layers) | (peaks["layer"] < 0)] if layers else peaks.iloc[0:0]
        summary = summarize_localization(part, seed=seed, band_width=max(n_layers, 1)) if len(part) else None
        if summary is None or summary.empty:
            why = "no object mention was scored" if layers else "no layer of this model in that band of depth"
            rows.append(_row(*base, note=why))
            continue
        got = summary.iloc[0]
        rows.append(_row(*base, got["accuracy"], got["low"], got["high"], got["n_images"],
                         control=_k3_control(part, got, seed)))
    return rows


def _k3_control(part: pd.DataFrame, got: pd.Series, seed: int) -> dict:
    """The permuted-label control of a band (the peaks scored against another image's object,
    `kaduri.localization.permuted_label`), against that object's uniform-peak chance; the
    uniform-peak chance alone when the table has no permuted columns."""
    data = part[(part["layer"] >= 0) & (part["head"] == MEAN_HEAD)]
    if "excluded" in data:
        data = data[data["excluded"].fillna("") == ""]
    if "hit_permuted" in data and data["hit_permuted"].notna().any():
        per_mention = data.dropna(subset=["hit_permuted"]).groupby(["image_id", "mention"])[
            ["hit_permuted", "chance_permuted"]].mean()
        low, high = cluster_bootstrap_ci(per_mention["hit_permuted"].to_numpy(dtype=float),
                                         per_mention.index.get_level_values("image_id"), seed=seed)
        return {"control": "permuted labels: each peak scored against another image's object (its chance beside)",
                "control_value": float(per_mention["hit_permuted"].mean()), "control_low": low, "control_high": high,
                "chance": float(per_mention["chance_permuted"].mean())}
    return {"control": "uniform-peak chance (share of the image's tokens that count as hits); no permuted labels "
                       "in this table",
            "control_value": float(got["chance"]), "control_low": np.nan, "control_high": np.nan,
            "chance": float(got["chance"])}


# ---- K4 -------------------------------------------------------------------------------------------
K4_CLAIMS = (("single_turn", False, "full image: the upper bound", 0.8483),
             ("prompt_image_topk", True, "cache of the prompt and the top 5% image tokens keeps 96% of it", 0.8146),
             ("prompt_cache", False, "cache of the prompt tokens only", 0.6103))


def _k4_control(questions: pd.DataFrame, setting: str, seed: int) -> dict:
    """Blind answerers on a setting's questions; for the mean, on each strategy's own set (the prior
    fitted within it) with weight 1/3 per row, so that it is the mean of the strategies' controls."""
    if setting != MEAN_SETTING:
        weights = setting_weights(questions, setting)
        return controls.best_blind(questions[weights > 0], weights[weights > 0], seed=seed)
    parts = [questions[setting_weights(questions, s) > 0].assign(strategy=s) for s in SUMMARY_SETTINGS[:-1]]
    stacked = pd.concat(parts, ignore_index=True)
    return controls.best_blind(stacked, pd.Series(1.0, index=stacked.index), seed=seed, sets=stacked["strategy"])


def _k4_rows(answers: pd.DataFrame, seed: int) -> list[dict]:
    summary = summarize_reprompting(answers, seed=seed) if len(answers) else pd.DataFrame(
        columns=["method", "k_fraction", "setting", "accuracy", "accuracy_low", "accuracy_high", "n_questions",
                 "n_images", "truth_yes_share"])
    fractions = sorted(float(f) for f in summary["k_fraction"].dropna().unique())
    k = 0.05 if 0.05 in fractions else (fractions[-1] if fractions else np.nan)
    questions = answers.drop_duplicates("question_id") if len(answers) else answers
    rows = []
    for setting in SUMMARY_SETTINGS:
        control = _k4_control(questions, setting, seed) if len(questions) else None
        label = "the mean of the three POPE strategies" if setting == MEAN_SETTING else f"POPE {setting}"
        for method, topk, claim, value in K4_CLAIMS:
            fraction = k if topk else np.nan
            condition = method if not topk else f"{method} {100 * fraction:g}%"
            base = (KADURI, "K4", claim, INTERNVL, "MME yes/no questions after the describe prompt", value, "=",
                    UNSOURCED, f"{label}: balanced COCO-category yes/no questions", condition,
                    "yes/no accuracy" + (" (the question asked on its own with the image)"
                                         if method == "single_turn" else " (question after the cache)"))
            in_setting = summary["setting"] == setting
            chosen = summary[in_setting & (summary["method"] == method)
                             & (summary["k_fraction"].isna() if not topk else np.isclose(summary["k_fraction"], fraction))]
            if len(chosen):
                got = chosen.iloc[0]
                note = "" if not topk or fraction == 0.05 else f"the run has no 5%: k = {100 * fraction:g}%"
                rows.append(_row(*base, got["accuracy"], got["accuracy_low"], got["accuracy_high"],
                                 got["n_questions"], control=control, note=note))
            else:
                rows.append(_row(*base, control=control, note=f"no {condition} rows in this run's K4 table"))
    return rows


def paper_comparison(tables: RunTables, model: str, organism: bool, seed: int = 0) -> pd.DataFrame:
    """The comparison table (module docstring)."""
    rows = [*_n1_rows(tables.ablation, seed, tables.vocabulary), *_k2_rows(tables, seed),
            *_k3_rows(tables.localization, seed), *_k4_rows(tables.reprompt, seed)]
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("setting"), "model", model)
    if organism:
        table["note"] = [f"{ORGANISM_NOTE}; {note}" if note else ORGANISM_NOTE for note in table["note"]]
    return table[list(COLUMNS)]


# ---- per-category breakdown ----------------------------------------------------------------------
def _categories(value) -> set[str]:
    return {c for c in value.split(";") if c} if isinstance(value, str) else set()


def by_category(tables: RunTables, seed: int = 0) -> pd.DataFrame:
    """Every headline broken down by category (long format, BREAKDOWN_COLUMNS): N1 flip rate of the
    object and count-matched random tokens per target category; K2 the share of images whose
    unablated description names a category in which the condition's description still names it
    (recall per category); K3 localization accuracy per mentioned category and band of depth; K4
    accuracy per asked category, POPE strategy and method."""
    rows = []
    ablation = tables.ablation
    included = ablation[ablation["included"].astype(bool) & (ablation["condition"] != "none")]
    keep = included["condition"].str.match(r"^(object_b1|random_matched_b1)$")
    for (setting, condition, category), part in included[keep].groupby(["setting", "condition", "category"]):
        rows.append({"experiment": "N1", "setting": setting, "condition": condition, "category": category,
                     "value": float(part["flipped"].astype(float).mean()), "n": len(part),
                     "n_images": int(part["image_id"].nunique())})
    judged, _, _ = _k2_judged(tables)
    for condition in ("image->generated", "image->query"):
        part = judged[judged["condition"] == condition].drop_duplicates("image_id")
        kept: dict[str, list[float]] = {}
        for matched, missed in zip(part["matched"], part["missed"]):
            for category in _categories(matched) | _categories(missed):
                kept.setdefault(category, []).append(float(category in _categories(matched)))
        for category, values in sorted(kept.items()):
            rows.append({"experiment": "K2", "setting": "describe", "condition": condition, "category": category,
                         "value": float(np.mean(values)), "n": len(values), "n_images": len(values)})
    peaks = tables.localization
    data = peaks[(peaks["layer"] >= 0) & (peaks["head"] == MEAN_HEAD)] if len(peaks) else peaks
    if len(data):
        n_layers = int(data["layer"].max()) + 1
        band = (8 * data["layer"]) // n_layers
        data = data.assign(band=band)
        for (b, category), part in data[data["band"] < 5].groupby(["band", "category"]):
            per_mention = part.groupby(["image_id", "mention"])["hit"].mean()
            rows.append({"experiment": "K3", "setting": f"paper band {10 * b}-{10 * b + 9} of 80",
                         "condition": "peak cell on the object", "category": category,
                         "value": float(per_mention.mean()), "n": len(per_mention),
                         "n_images": int(per_mention.index.get_level_values(0).nunique())})
    answers = tables.reprompt
    if len(answers):
        methods = answers[answers["method"].isin([m for m, _, _, _ in K4_CLAIMS])]
        for setting in SUMMARY_SETTINGS[:-1]:
            weights = setting_weights(methods, setting)
            part = methods[weights > 0]
            for (method, fraction, category), group in part.groupby(["method", "k_fraction", "category"],
                                                                     dropna=False):
                label = method if pd.isna(fraction) else f"{method} {100 * fraction:g}%"
                rows.append({"experiment": "K4", "setting": setting, "condition": label, "category": category,
                             "value": float(group["correct"].astype(float).mean()), "n": len(group),
                             "n_images": int(group["image_id"].nunique())})
    return pd.DataFrame(rows, columns=list(BREAKDOWN_COLUMNS))
