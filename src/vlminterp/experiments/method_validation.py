"""Do the methods find a planted mechanism? (issue #24; results/<run>/papers/method_validation.csv)

    table = method_validation(ValidationTables(ablation=..., blocking=..., knockout=..., localization=...,
                                               reprompt=...), Planted("window", (1, 2), n_layers=4))

Reads the run's N1-K4 tables and checks each against what the planted routing makes true by
construction (no-op, destroys, equal, none). The expectations, their pass rules and the columns:
docs/PROTOCOLS.md, "Planted routings: validating the methods".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vlminterp.experiments.kaduri.reprompt import MEAN_SETTING
from vlminterp.stats import bootstrap_ci

COLUMNS = ("routing", "routing_layers", "method", "condition", "truth", "expected", "value", "low", "high", "n",
           "passed", "note")
#: a description whose F1 against the unablated one has its 95% upper bound below this is destroyed
DESTROYED = 0.5
NO_OP_TOLERANCE = 1e-6
#: N3 block sets whose queries are image tokens (the last row): no truth planted by a window routing
IMAGE_QUERY_SETS = ("object_to_last_row", "image_to_last_row")


@dataclass(frozen=True)
class Planted:
    """The run's planted routing: routing (direct | query_routed | window), band (window's layers)."""

    routing: str
    band: tuple[int, ...]
    n_layers: int


@dataclass
class ValidationTables:
    """This run's tables: N1 ablation.csv, N3 blocking.csv, K2 summary.csv, K3 peaks.csv, K4 summary.csv,
    and K2's per-image descriptions.csv (``descriptions``; None: judged on the summary alone)."""

    ablation: pd.DataFrame
    blocking: pd.DataFrame
    knockout: pd.DataFrame
    localization: pd.DataFrame
    reprompt: pd.DataFrame
    descriptions: pd.DataFrame | None = None


def _row(planted: Planted, method, condition, truth, expected, value=np.nan, low=np.nan, high=np.nan, n=0,
         passed=None, note="") -> dict:
    return {"routing": planted.routing, "routing_layers": " ".join(map(str, planted.band)), "method": method,
            "condition": condition, "truth": truth, "expected": expected, "value": float(value), "low": float(low),
            "high": float(high), "n": int(n), "passed": passed, "note": note}


def _judge(expected: str, low: float, high: float, value: float) -> bool | None:
    if np.isnan(value):
        return None
    if expected == "no-op":
        return bool(low >= 1 - NO_OP_TOLERANCE)
    if expected == "destroys":
        return bool(high < DESTROYED)
    return None


def blocked_layers(condition: pd.Series, n_layers: int) -> set[int] | None:
    """The layers where a K2 condition hides the image from its target (None: no knockout)."""
    family = condition["family"]
    start, end = int(condition["layer_start"]), int(condition["layer_end"])
    if family in ("all_layers", "from_layer"):
        return set(range(start, end + 1))
    if family in ("window", "fixed_window"):
        return set(range(n_layers)) - set(range(start, end + 1))
    return None


def k2_truth(condition: pd.Series, planted: Planted) -> tuple[str, str] | None:
    """(expected, truth) of one K2 condition under the planted routing, or None where none is planted."""
    blocked = blocked_layers(condition, planted.n_layers)
    target = str(condition["target"]) if isinstance(condition["target"], str) else ""
    if condition["family"] == "all_layers":
        target = condition["condition"].split("->", 1)[1]
    if blocked is None or not blocked:
        return None
    everything = blocked >= set(range(planted.n_layers))
    if target == "query+generated" and everything:
        return "destroys", "no route from the image to the answer is left"
    if planted.routing == "query_routed":
        if target == "generated":
            return "no-op", "generated tokens never read image tokens (planted): blocking them changes nothing"
        if target == "query" and everything:
            return "destroys", "the query is the image's only route to the answer (planted)"
    if planted.routing == "window":
        band = set(planted.band)
        if not blocked & band:
            return "no-op", f"text reads image tokens only in layers {sorted(band)} (planted): blocking elsewhere changes nothing"
        if target == "query+generated" and blocked >= band:
            return "destroys", f"text reads image tokens only in layers {sorted(band)} (planted), all blocked here"
    return None


def _k2_rows(knockout: pd.DataFrame, planted: Planted, descriptions: pd.DataFrame | None) -> list[dict]:
    rows = []
    for _, condition in knockout.iterrows():
        truth = k2_truth(condition, planted)
        if truth is None:
            continue
        expected, words = truth
        low, high, value = condition["low"], condition["high"], condition["mean"]
        passed = _judge(expected, low, high, value)
        note = "a no-op by construction: the constraint already blocks these edges" if expected == "no-op" else ""
        if expected == "destroys" and descriptions is not None and len(descriptions):
            texts = descriptions.loc[descriptions["condition"] == condition["condition"], "description"]
            distinct = texts.fillna("").nunique()
            passed = bool(len(texts)) and distinct == 1
            note = f"{distinct} distinct description(s) over {len(texts)} images (image-independent: 1)"
        rows.append(_row(planted, "K2", condition["condition"], words, expected, value, low, high,
                         condition["n_images"], passed, note=f"F1 vs the unablated description; {note}".rstrip("; ")))
    return rows


def _n3_rows(blocking: pd.DataFrame, planted: Planted, seed: int) -> list[dict]:
    """window: every block set blocked in a window of layers outside the band changes nothing."""
    if planted.routing != "window" or blocking.empty:
        return []
    # the sets whose queries are text (the last position, every text position); the last-row sets
    # block image -> image edges, which the window routing leaves open
    text_queries = ~blocking["block_set"].isin(["none", *IMAGE_QUERY_SETS])
    data = blocking[text_queries & blocking["included"].astype(bool)]
    band = set(planted.band)
    rows = []
    for block_set, part in data.groupby("block_set", sort=True):
        outside = part[[not band & set(range(int(s), int(e) + 1))
                        for s, e in zip(part["window_start"], part["window_end"])]]
        if outside.empty:
            continue
        drops = outside["drop"].to_numpy(dtype=float)
        low, high = bootstrap_ci(drops, seed=seed)
        largest = float(np.abs(drops).max())
        windows = sorted(set(outside["window"]))
        rows.append(_row(planted, "N3", f"{block_set}, windows outside the band ({', '.join(windows)})",
                         f"text reads image tokens only in layers {sorted(band)} (planted): blocking elsewhere "
                         "changes nothing", "no-op", drops.mean(), low, high, outside["image_id"].nunique(),
                         bool(largest <= NO_OP_TOLERANCE),
                         note=f"drop of the answer's probability; largest |drop| {largest:.2g}; a no-op by "
                              "construction: the constraint already blocks these edges"))
    return rows


def _n1_rows(ablation: pd.DataFrame, planted: Planted, seed: int) -> list[dict]:
    from vlminterp.summaries import flip_summary

    if ablation.empty:
        return []
    summary = flip_summary(ablation, seed=seed)
    rows = []
    for setting in ("generative", "polling", "vqa"):
        part = summary[summary["setting"] == setting].set_index("condition")
        for condition in ("object_b1", "random_matched_b1"):
            if condition in part.index:
                got = part.loc[condition]
                rows.append(_row(planted, "N1", f"{setting}: {condition}",
                                 "none planted: the routing fixes edges between token groups, not where an object's "
                                 "information sits among the image tokens", "none", got["mean"], got["low"],
                                 got["high"], got["n"], note="flip rate"))
    return rows


def _k3_rows(peaks: pd.DataFrame, planted: Planted, seed: int) -> list[dict]:
    from vlminterp.experiments.kaduri.localization import summarize_localization

    summary = summarize_localization(peaks, seed=seed, band_width=max(planted.n_layers, 1)) if len(peaks) else None
    if summary is None or summary.empty:
        return [_row(planted, "K3", "peak cell on the object, all layers", "none planted", "none",
                     note="no object mention was scored (K3 scores the mentions image->generated removes; "
                          "under query_routed it removes none)" if planted.routing == "query_routed"
                     else "no object mention was scored")]
    got = summary.iloc[0]
    note = {"query_routed": "generated tokens never attend to image tokens here, so their attention holds no "
                            "location: the accuracy is what an empty signal scores",
            "window": f"outside layers {list(planted.band)} text never attends to image tokens"}.get(planted.routing, "")
    return [_row(planted, "K3", "peak cell on the object, all layers", "none planted", "none", got["accuracy"],
                 got["low"], got["high"], got["n_images"], note=note)]


def _k4_rows(reprompt: pd.DataFrame, planted: Planted) -> list[dict]:
    if reprompt.empty:
        return []
    data = reprompt[reprompt["setting"] == MEAN_SETTING].set_index("method")
    missing = {"prompt_cache", "full_image"} - set(data.index)
    if missing:  # a K4 summary without them would drop the planted truth silently
        raise ValueError(f"K4 summary: no {sorted(missing)} rows in setting {MEAN_SETTING!r} "
                         f"(settings: {sorted(reprompt['setting'].unique())})")
    prompt, full = data.loc[["prompt_cache"]].iloc[0], data.loc[["full_image"]].iloc[0]
    note = f"accuracy; full image {full['accuracy']:.3f}"
    if "single_turn" in data.index:  # what the image gives the answer at all: equal at chance proves little
        note += f"; single turn {data.loc[['single_turn']].iloc[0]['accuracy']:.3f}"
    if planted.routing == "query_routed":
        passed = bool(prompt["accuracy_low"] - 1e-9 <= full["accuracy"] <= prompt["accuracy_high"] + 1e-9)
        return [_row(planted, "K4", "prompt_cache vs full_image",
                     "the continuation is generated text, which never reads image tokens (planted): the prompt's "
                     "cache answers as the full image", "equal", prompt["accuracy"], prompt["accuracy_low"],
                     prompt["accuracy_high"], prompt["n_questions"], passed, note)]
    return [_row(planted, "K4", "prompt_cache vs full_image", "none planted", "none", prompt["accuracy"],
                 prompt["accuracy_low"], prompt["accuracy_high"], prompt["n_questions"], note=note)]


def method_validation(tables: ValidationTables, planted: Planted, seed: int = 0) -> pd.DataFrame:
    """The validation table (module docstring)."""
    rows = [*_n1_rows(tables.ablation, planted, seed), *_n3_rows(tables.blocking, planted, seed),
            *_k2_rows(tables.knockout, planted, tables.descriptions), *_k3_rows(tables.localization, planted, seed),
            *_k4_rows(tables.reprompt, planted)]
    return pd.DataFrame(rows, columns=list(COLUMNS))
