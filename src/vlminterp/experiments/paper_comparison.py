"""The papers' headline numbers beside this run's, with 95% intervals (results/<run>/papers/paper_comparison.csv).

    table = paper_comparison(RunTables(ablation=..., knockout=..., localization=..., reprompt=...),
                             model="llava-hf/llava-1.5-7b-hf", organism=False, seed=0)

One row per headline claim of Neo et al. (N1) and Kaduri et al. (K2-K4), in PAPER_HEADLINES:
what the paper reports (its model, setting and number, or the claim in words where it gives no
number) and this run's number read from its own tables the same way its summaries compute it
(`neo_ablation.flip_summary`, `kaduri_knockout.summarize_knockouts`,
`kaduri_localization.summarize_localization`, `kaduri_reprompt.summarize_reprompting`).
Numbers are fractions (the papers' percentages / 100). A run's value is NaN, with a note saying
why, when its tables hold no such condition (e.g. a sweep left out) or its model has no layer in
a paper's band of depth.

Columns: paper, experiment, claim, paper_model, paper_setting, paper_value, relation (how the
paper states it: "=" a number, ">" a lower bound, "" a claim in words), model, setting (this
run's), condition (the run's condition or method), value, low, high (95% bootstrap interval),
n (images, or questions for K4), note.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vlminterp.experiments.kaduri_localization import summarize_localization
from vlminterp.experiments.neo_ablation import flip_summary

COLUMNS = ("paper", "experiment", "claim", "paper_model", "paper_setting", "paper_value", "relation", "model",
           "setting", "condition", "value", "low", "high", "n", "note")
NEO, KADURI = "Neo et al. (ICLR 2025)", "Kaduri et al. (CVPR 2025)"
NEO_MODEL, NEO_DATA = "LLaVA-1.5-7B", "COCO 2017 train, targets of 1000-2000 px^2"
INTERNVL = "InternVL2-76B"
#: Kaduri et al.'s K3 bands (10 layers of InternVL2-76B's 80 each): accuracy read off their figure
#: (a secondary reading, not a table of the paper).
K3_BANDS = ((0, 0.30), (1, 0.45), (2, 0.65), (3, 0.73), (4, 0.60))
ORGANISM_NOTE = ("the organism is not LLaVA: a LLaVA-architecture model of about a million parameters trained on "
                 "the shapes world; it shows the method, not the papers' models")


@dataclass
class RunTables:
    """This run's tables: N1's ablation.csv, K2's summary.csv, K3's peaks.csv, K4's summary.csv."""

    ablation: pd.DataFrame
    knockout: pd.DataFrame
    localization: pd.DataFrame
    reprompt: pd.DataFrame


def _row(paper, experiment, claim, paper_model, paper_setting, paper_value, relation, setting, condition,
         value=np.nan, low=np.nan, high=np.nan, n=0, note="") -> dict:
    return {"paper": paper, "experiment": experiment, "claim": claim, "paper_model": paper_model,
            "paper_setting": paper_setting, "paper_value": paper_value, "relation": relation, "setting": setting,
            "condition": condition, "value": float(value), "low": float(low), "high": float(high), "n": int(n),
            "note": note}


def _n1_rows(ablation: pd.DataFrame, seed: int) -> list[dict]:
    """Flip rates of the object tokens and the count-matched baselines, per setting (buffer 1 when
    the run has it, else its smallest buffer)."""
    summary = flip_summary(ablation, seed=seed)
    rows = []
    for setting in ("generative", "polling", "vqa"):
        part = summary[summary["setting"] == setting].set_index("condition")
        buffers = sorted(int(c.rsplit("_b", 1)[1]) for c in part.index if c.startswith("object_b"))
        buffer = 1 if 1 in buffers else (buffers[0] if buffers else 0)
        claims = [(f"object_b{buffer}", "ablating the object's tokens flips over 70% of correct answers", 0.70, ">"),
                  (f"random_matched_b{buffer}", "far fewer flips for as many random tokens", np.nan, ""),
                  ("register", "far fewer flips for high-norm (register) tokens", np.nan, ""),
                  (f"high_gradient_b{buffer}", "far fewer flips for as many high-gradient tokens", np.nan, "")]
        for condition, claim, value, relation in claims:
            base = (NEO, "N1", claim, NEO_MODEL, f"{NEO_DATA}; {setting}", value, relation, setting, condition)
            if condition in part.index:
                got = part.loc[condition]
                rows.append(_row(*base, got["mean"], got["low"], got["high"], got["n"]))
            else:
                rows.append(_row(*base, note=f"no {condition} rows in this run's N1 table"))
    return rows


def _k2_rows(knockout: pd.DataFrame) -> list[dict]:
    target = knockout["target"].fillna("") if "target" in knockout else pd.Series("", index=knockout.index)
    fixed = knockout[(knockout["family"] == "fixed_window") & (target == "generated")]
    window = (f"fixed {int(fixed['layer_start'].iloc[0])}-{int(fixed['layer_end'].iloc[0])} (generated)"
              if len(fixed) else "fixed window (generated)")
    claims = [("image->generated", "the generated tokens never see the image, all layers: partial description",
               0.40, "=", "describe prompt, F1 of objects vs the unablated description"),
              ("image->query", "the query never sees the image, all layers: no description left", 0.0, "=",
               "describe prompt, F1 of objects vs the unablated description"),
              (window, "the image visible to the generated tokens only in the middle quarter of the layers keeps "
                       "most of the description", np.nan, "",
               "describe prompt; the authors' LLaVA window 4-20 of 32 (InternVL2-76B: 20-40 of 80)")]
    rows = []
    for condition, claim, value, relation, setting in claims:
        base = (KADURI, "K2", claim, INTERNVL, setting, value, relation, "describe, F1 vs unablated", condition)
        part = knockout[knockout["condition"] == condition]
        if len(part):
            got = part.iloc[0]
            rows.append(_row(*base, got["mean"], got["low"], got["high"], got["n_images"]))
        else:
            rows.append(_row(*base, note=f"no {condition} condition in this run's K2 summary"))
    return rows


def _k3_rows(peaks: pd.DataFrame, seed: int) -> list[dict]:
    """Accuracy over the run's layers lying in the same fraction of the depth as each paper band."""
    data = peaks[peaks["layer"] >= 0] if "layer" in peaks else peaks
    n_layers = int(data["layer"].max()) + 1 if len(data) else 0
    rows = []
    for band, value in K3_BANDS:
        layers = [l for l in range(n_layers) if band * n_layers <= 8 * l < (band + 1) * n_layers]
        claim = f"attention of generated object words peaks on the object, layers {10 * band}-{10 * band + 9} of 80"
        base = (KADURI, "K3", claim, INTERNVL, "describe prompt, SAM masks, peak within about one token", value, "=",
                f"layers {layers[0]}-{layers[-1]} of {n_layers}" if layers else f"none of {n_layers} layers",
                "peak cell on the object")
        part = peaks[peaks["layer"].isin(layers) | (peaks["layer"] < 0)] if layers else peaks.iloc[0:0]
        summary = summarize_localization(part, seed=seed, band_width=max(n_layers, 1)) if len(part) else None
        if summary is None or summary.empty:
            why = "no object mention was scored" if layers else "no layer of this model in that band of depth"
            rows.append(_row(*base, note=why))
            continue
        got = summary.iloc[0]
        rows.append(_row(*base, got["accuracy"], got["low"], got["high"], got["n_images"],
                         note="paper value read off its figure"))
    return rows


def _k4_rows(reprompt: pd.DataFrame) -> list[dict]:
    data = reprompt[reprompt["setting"] == "all"]
    fractions = sorted(float(f) for f in data["k_fraction"].dropna().unique())
    k = 0.05 if 0.05 in fractions else (fractions[-1] if fractions else np.nan)
    claims = [("full_image", np.nan, "full image: the upper bound", 0.8483),
              ("prompt_image_topk", k, "cache of the prompt and the top 5% image tokens keeps 96% of it", 0.8146),
              ("prompt_cache", np.nan, "cache of the prompt tokens only", 0.6103)]
    rows = []
    for method, fraction, claim, value in claims:
        label = method if np.isnan(fraction) else f"{method} {100 * fraction:g}%"
        base = (KADURI, "K4", claim, INTERNVL, "MME yes/no questions after the describe prompt", value, "=",
                "POPE-style COCO-category yes/no questions, all types", label)
        part = data[(data["method"] == method)
                    & (data["k_fraction"].isna() if np.isnan(fraction) else np.isclose(data["k_fraction"], fraction))]
        if len(part):
            got = part.iloc[0]
            note = "" if np.isnan(fraction) or fraction == 0.05 else f"the run has no 5%: k = {100 * fraction:g}%"
            rows.append(_row(*base, got["accuracy"], got["accuracy_low"], got["accuracy_high"], got["n_questions"],
                             note=note))
        else:
            rows.append(_row(*base, note=f"no {label} rows in this run's K4 summary"))
    return rows


def paper_comparison(tables: RunTables, model: str, organism: bool, seed: int = 0) -> pd.DataFrame:
    """The comparison table (module docstring)."""
    rows = [*_n1_rows(tables.ablation, seed), *_k2_rows(tables.knockout), *_k3_rows(tables.localization, seed),
            *_k4_rows(tables.reprompt)]
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("setting"), "model", model)
    if organism:
        table["note"] = [f"{ORGANISM_NOTE}; {note}" if note else ORGANISM_NOTE for note in table["note"]]
    return table[list(COLUMNS)]
