"""The papers' headline numbers beside this run's, with 95% intervals and a null control each
(results/<run>/papers/paper_comparison.csv), and their per-category breakdown (by_category.csv).

    summaries = RunSummaries(ablation=..., ablation_controls=..., ...)   # the run's summary tables
    table = paper_comparison(summaries, model="llava-hf/llava-1.5-7b-hf", organism=False)
    breakdown = by_category(summaries)

One row per headline claim of Neo et al. (N1) and Kaduri et al. (K2-K4), this run's number, its
interval and its control read from the summary tables of its experiment (each summary rule writes
its summary, its controls table, `controls.CONTROL_COLUMNS`, and its per-category breakdown): this
module computes no statistic, it picks the headline rows and joins them with the papers' numbers.
Claims, sources, controls and columns: docs/PROTOCOLS.md, the paper comparison.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vlminterp.experiments import controls
from vlminterp.experiments.controls import NO_CONTROL, control_of
from vlminterp.experiments.kaduri.localization import DEPTH_GROUPING
from vlminterp.experiments.kaduri.reprompt import MEAN_SETTING, SUMMARY_SETTINGS
from vlminterp.summaries import headline_buffer, random_control

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
#: Kaduri et al.'s K3 bands (10 layers of InternVL2-76B's 80 each, the run's eighths of the depth,
#: `kaduri.localization.depth_band`): accuracy from a secondary reading of their figure,
#: unverified (relation "~", source UNSOURCED).
K3_BANDS = ((0, 0.30), (1, 0.45), (2, 0.65), (3, 0.73), (4, 0.60))
ORGANISM_NOTE = ("the organism is not LLaVA: a LLaVA-architecture model of about a million parameters trained on "
                 "the shapes world; it shows the method, not the papers' models")
NO_FLIPS = pd.DataFrame(columns=["condition", "flip_rate", "low", "high", "n_pairs", "n_images"])


@dataclass
class RunSummaries:
    """This run's summary tables, each the output of its experiment's summary rule (a field per
    entry of a stage's `compared_as` in vlminterp.workflow.registry): N1's flip summary, K2's F1
    per condition, K3's accuracy summary (its eighths of the depth), K4's accuracy per method and
    setting; `*_controls` their controls tables, `*_by_category` their per-category breakdowns;
    knockout_llm*: the LLM judge's K2 summaries when it ran (judge_model names it)."""

    ablation: pd.DataFrame
    ablation_controls: pd.DataFrame
    ablation_by_category: pd.DataFrame
    knockout: pd.DataFrame
    knockout_controls: pd.DataFrame
    knockout_by_category: pd.DataFrame
    localization: pd.DataFrame
    localization_controls: pd.DataFrame
    localization_by_category: pd.DataFrame
    reprompt: pd.DataFrame
    reprompt_controls: pd.DataFrame
    reprompt_by_category: pd.DataFrame
    knockout_llm: pd.DataFrame | None = None
    knockout_llm_controls: pd.DataFrame | None = None
    knockout_llm_by_category: pd.DataFrame | None = None
    judge_model: str = ""


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
def _n1_control(table: pd.DataFrame, setting: str, condition: str, base: str) -> dict:
    """The control of an N1 row: the condition's own (generative), else the setting's (polling,
    VQA); a generative condition with no permuted pair in the run says so (`controls.mention_control`)."""
    found = control_of(table, setting, condition) or control_of(table, setting)
    return found or controls.mention_control(NO_FLIPS, condition, base)


def _n1_rows(summaries: RunSummaries) -> list[dict]:
    summary = summaries.ablation
    rows = []
    for setting in ("generative", "polling", "vqa"):
        part = summary[summary["setting"] == setting].set_index("condition")
        buffer = headline_buffer(part.index)
        base = random_control(part, buffer)
        claims = [(f"object_b{buffer}", "ablating the object's tokens flips over 70% of correct answers", 0.70, ">",
                   NEO_ABSTRACT),
                  (f"random_matched_b{buffer}", "far fewer flips for as many random tokens", np.nan, "", UNSOURCED),
                  ("register", "far fewer flips for high-norm (register) tokens", np.nan, "", UNSOURCED),
                  (f"high_gradient_b{buffer}", "far fewer flips for as many high-gradient tokens", np.nan, "",
                   UNSOURCED)]
        for condition, claim, value, relation, source in claims:
            base_row = (NEO, "N1", claim, NEO_MODEL, f"{NEO_DATA}; {setting}", value, relation, source, setting,
                        condition, "share of correct unablated answers that the ablation flips")
            control = _n1_control(summaries.ablation_controls, setting, condition, base)
            if condition in part.index:
                got = part.loc[condition]
                rows.append(_row(*base_row, got["mean"], got["low"], got["high"], got["n"], control=control))
            else:
                rows.append(_row(*base_row, control=control, note=f"no {condition} rows in this run's N1 table"))
    return rows


# ---- K2 -------------------------------------------------------------------------------------------
def _k2_judged(summaries: RunSummaries) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str, str]:
    """(K2's summary, controls and per-category tables the rows read, measure, note): the LLM
    judge's when it ran."""
    if summaries.knockout_llm is not None and len(summaries.knockout_llm):
        model = summaries.judge_model or "LLM"
        return (summaries.knockout_llm, summaries.knockout_llm_controls, summaries.knockout_llm_by_category,
                f"F1 of the objects the LLM judge ({model}) lists, vs the unablated description", "")
    return (summaries.knockout, summaries.knockout_controls, summaries.knockout_by_category,
            "F1 of COCO-category mentions (offline synonym judge), vs the unablated description",
            "offline judge: F1 over the dataset's categories, not the paper's F1 over free-form objects listed by "
            "GPT-4o; enable kaduri.llm_judge for the paper's measure")


def _k2_rows(summaries: RunSummaries) -> list[dict]:
    summary, control_table, _, measure, judge_note = _k2_judged(summaries)
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
        control = control_of(control_table, condition=condition)
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
def _k3_rows(summaries: RunSummaries) -> list[dict]:
    """Accuracy over the run's layers lying in the same fraction of the depth as each paper band
    (the K3 summary's eighths of the depth)."""
    summary = summaries.localization
    per_layer = summary[summary["grouping"] == "layer"]
    n_layers = int(per_layer["layer_end"].max()) + 1 if len(per_layer) else 0
    eighths = summary[summary["grouping"] == DEPTH_GROUPING].set_index("band")
    rows = []
    for band, value in K3_BANDS:
        layers = [l for l in range(n_layers) if band * n_layers <= 8 * l < (band + 1) * n_layers]
        claim = f"attention of generated object words peaks on the object, layers {10 * band}-{10 * band + 9} of 80"
        base = (KADURI, "K3", claim, INTERNVL, "describe prompt, SAM masks, peak within about one token", value, "~",
                UNSOURCED, f"layers {layers[0]}-{layers[-1]} of {n_layers}" if layers else f"none of {n_layers} layers",
                "peak cell on the object", "share of object mentions whose attention peak lies on the object")
        if not layers or band not in eighths.index:
            why = "no object mention was scored" if layers else "no layer of this model in that band of depth"
            rows.append(_row(*base, note=why))
            continue
        got = eighths.loc[band]
        rows.append(_row(*base, got["accuracy"], got["low"], got["high"], got["n_images"],
                         control=control_of(summaries.localization_controls, controls.depth_setting(band))))
    return rows


# ---- K4 -------------------------------------------------------------------------------------------
K4_CLAIMS = (("single_turn", False, "full image: the upper bound", 0.8483),
             ("prompt_image_topk", True, "cache of the prompt and the top 5% image tokens keeps 96% of it", 0.8146),
             ("prompt_cache", False, "cache of the prompt tokens only", 0.6103))


def _k4_rows(summaries: RunSummaries) -> list[dict]:
    summary = summaries.reprompt
    fractions = sorted(float(f) for f in summary["k_fraction"].dropna().unique())
    k = 0.05 if 0.05 in fractions else (fractions[-1] if fractions else np.nan)
    rows = []
    for setting in SUMMARY_SETTINGS:
        control = control_of(summaries.reprompt_controls, setting)
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


def paper_comparison(summaries: RunSummaries, model: str, organism: bool) -> pd.DataFrame:
    """The comparison table (module docstring)."""
    rows = [*_n1_rows(summaries), *_k2_rows(summaries), *_k3_rows(summaries), *_k4_rows(summaries)]
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("setting"), "model", model)
    if organism:
        table["note"] = [f"{ORGANISM_NOTE}; {note}" if note else ORGANISM_NOTE for note in table["note"]]
    return table[list(COLUMNS)]


# ---- per-category breakdown ----------------------------------------------------------------------
def by_category(summaries: RunSummaries) -> pd.DataFrame:
    """Every headline broken down by category (long format, BREAKDOWN_COLUMNS), from the summaries'
    per-category tables: N1 flip rate of the object and count-matched random tokens per target
    category; K2 the share of images whose unablated description names a category in which the
    condition's description still names it (recall per category); K3 localization accuracy per
    mentioned category and paper band of depth; K4 accuracy per asked category, POPE strategy and
    method."""
    n1 = summaries.ablation_by_category
    k2 = _k2_judged(summaries)[2]
    k3 = summaries.localization_by_category
    k3 = k3[k3["band"] < len(K3_BANDS)]
    k4 = summaries.reprompt_by_category
    parts = [n1[n1["condition"].str.match(r"^(object_b1|random_matched_b1)$")].assign(experiment="N1"),
             *(k2[k2["condition"] == condition].assign(experiment="K2", setting="describe")
               for condition in ("image->generated", "image->query")),
             k3.assign(experiment="K3", condition="peak cell on the object",
                       setting=[f"paper band {10 * b}-{10 * b + 9} of 80" for b in k3["band"]]),
             k4[k4["method"].isin([m for m, _, _, _ in K4_CLAIMS])].assign(experiment="K4")]
    rows = [row for part in parts for row in part[list(BREAKDOWN_COLUMNS)].to_dict("records")]
    return pd.DataFrame(rows, columns=list(BREAKDOWN_COLUMNS))
