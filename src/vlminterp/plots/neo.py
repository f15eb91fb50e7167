"""Figures of the Neo et al. experiments; each reads one tidy table and writes a PNG and a PDF.

    from vlminterp.plots.neo import plot_flip_rates, plot_lens_curves, plot_blocking_drops
    plot_flip_rates(ablation_table, Path("results/run/neo/ablation/flip_rates"), seed=0)
    plot_lens_curves(lens_scores, Path("results/run/neo/logit_lens/lens_curves"), seed=0)
    plot_blocking_drops(blocking_table, Path("results/run/neo/blocking/blocking_drops"), seed=0)

Intervals are 95% percentile bootstraps over images (`vlminterp.stats.grouped_mean_ci`); N1's
flip rates are those of `summaries.flip_summary`, computed there once.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vlminterp.plots.organism import DECODER_LAYER, HIDDEN_STATE, save_figure  # noqa: E402
from vlminterp.stats import error_bars, excluded_counts, excluded_note, grouped_mean_ci  # noqa: E402
from vlminterp.summaries import flip_summary  # noqa: E402

SETTING_COLOURS = {"generative": "tab:green", "polling": "tab:orange", "vqa": "tab:blue"}
FAMILY_ORDER = ["object", "random_matched", "random", "register", "high_gradient", "all_image"]


def _condition_order(conditions) -> list[str]:
    def key(condition: str):
        family = next((f for f in sorted(FAMILY_ORDER, key=len, reverse=True) if condition.startswith(f)), condition)
        digits = "".join(ch for ch in condition.rsplit("_", 1)[-1] if ch.isdigit())
        return (FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER),
                int(digits) if digits else 0, condition)
    return sorted(set(conditions), key=key)


def duplicate_conditions(table: pd.DataFrame) -> dict[str, str]:
    """Conditions that ablate exactly the tokens of another (random_n{n} with n capped at every
    image token is all_image): {dropped: kept}. Judged per image, so a merged condition never hides
    a different measurement."""
    rows = table[table["condition"] != "none"]
    if "all_image" not in set(rows["condition"]):
        return {}
    every = rows[rows["condition"] == "all_image"].set_index(["image_id", "setting"])["n_tokens"]
    duplicates = {}
    for condition in sorted(set(rows["condition"])):
        if not condition.startswith("random_n"):
            continue
        tokens = rows[rows["condition"] == condition].set_index(["image_id", "setting"])["n_tokens"]
        if len(tokens) and tokens.reindex(every.index).equals(every.astype(tokens.dtype)):
            duplicates[condition] = "all_image"
    return duplicates


def plot_flip_rates(table: pd.DataFrame, stem: Path, *, seed: int = 0, n_resamples: int = 2000) -> list[Path]:
    """N1: share of correctly identified objects that flip to failure, per condition and setting.

    A bar of 0% is labelled "0", a condition a setting has no included image for "n/a" (so neither
    is mistaken for the other); a condition ablating the same tokens as all_image (random_n{n}
    with n = every image token) is drawn once, as all_image, its tick naming both."""
    duplicates = duplicate_conditions(table)
    table = table[~table["condition"].isin(list(duplicates))]
    included = table[table["included"].astype(bool) & (table["condition"] != "none")]
    settings = [s for s in ("generative", "polling", "vqa") if s in set(table["setting"])]
    summary = flip_summary(table, seed=seed, n_resamples=n_resamples)
    conditions = _condition_order(table.loc[table["condition"] != "none", "condition"])
    figure, axis = plt.subplots(figsize=(max(7.0, 0.62 * len(conditions) * max(1, len(settings)) / 2 + 3), 4.6))
    width = 0.8 / max(1, len(settings))
    x = np.arange(len(conditions))
    for index, setting in enumerate(settings):
        part = summary[summary["setting"] == setting].set_index("condition").reindex(conditions)
        n_included = int(table[(table["setting"] == setting) & (table["condition"] == "none")
                               & table["included"].astype(bool)]["image_id"].nunique())
        errors = error_bars(part["mean"], part["low"], part["high"])
        positions = x + (index - (len(settings) - 1) / 2) * width
        axis.bar(positions, part["mean"], width=width, yerr=errors,
                 capsize=2, color=SETTING_COLOURS.get(setting), label=f"{setting} (n={n_included} included)")
        for position, value in zip(positions, part["mean"]):
            if pd.isna(value):
                axis.text(position, 0.01, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="0.4")
            elif value == 0:
                axis.text(position, 0.01, "0", ha="center", va="bottom", fontsize=7,
                          color=SETTING_COLOURS.get(setting))
    tokens = included.groupby("condition")["n_tokens"].mean()
    same = {kept: [d for d, k in duplicates.items() if k == kept] for kept in set(duplicates.values())}
    axis.set_xticks(x)
    axis.set_xticklabels([f"{c}{' = ' + ', '.join(same[c]) if c in same else ''}\n"
                          f"({tokens.get(c, float('nan')):.0f} tok)" for c in conditions], rotation=40,
                         ha="right", fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("identification flip rate")
    axis.set_title("N1 token ablation: share of correct answers lost (95% bootstrap intervals)")
    axis.grid(axis="y", alpha=0.3)
    note = excluded_note(excluded_counts(table))
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title_fontsize=8,
                title="setting" + (f"\n({note})".replace(": ", ":\n", 1) if note else "")
                + "\n0 = no flip; n/a = no included image")
    return save_figure(figure, stem)


LENS_MEASURES = {"name_in_topk": "name or synonym in top-k", "name_rank1": "name ranks first among category names",
                 "name_top1": "top-1 token is the name"}


def plot_lens_curves(scores: pd.DataFrame, stem: Path, *, seed: int = 0, n_resamples: int = 2000) -> list[Path]:
    """N2: per layer, how often object vs background cells decode to the object's name."""
    n_categories = int(scores["n_categories"].iloc[0]) if "n_categories" in scores and len(scores) else None
    measures = [m for m in LENS_MEASURES if m in scores.columns]
    figure, axes = plt.subplots(1, len(measures), figsize=(4.6 * len(measures), 3.9), squeeze=False, sharey=True)
    for axis, measure in zip(axes[0], measures):
        summary = grouped_mean_ci(scores, by=["region", "layer"], value=measure, seed=seed, n_resamples=n_resamples)
        for region, colour in (("object", "tab:red"), ("background", "tab:gray")):
            part = summary[summary["region"] == region].sort_values("layer")
            if part.empty:
                continue
            axis.plot(part["layer"], part["mean"], marker="o", color=colour, label=f"{region} cells")
            axis.fill_between(part["layer"], part["low"], part["high"], color=colour, alpha=0.2)
        if measure == "name_rank1" and n_categories:
            axis.axhline(1 / n_categories, color="black", linestyle=":", linewidth=1, label=f"chance (1/{n_categories})")
            axis.legend(fontsize=8)
        axis.set_title(LENS_MEASURES[measure], fontsize=10)
        axis.set_xlabel(HIDDEN_STATE)
        axis.set_xticks(sorted(scores["layer"].unique()) if scores["layer"].nunique() <= 12 else
                        axis.get_xticks())
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of cells (mean over images)")
    axes[0][0].legend(fontsize=8)
    n_images = scores["image_id"].nunique()
    figure.suptitle(f"N2 logit lens on visual tokens ({n_images} images, 95% bootstrap intervals)")
    figure.tight_layout()
    return save_figure(figure, stem)


BLOCK_COLOURS = {"object_b0": "tab:red", "object_b1": "tab:orange", "object_b2": "tab:brown",
                 "non_object": "tab:gray", "object_to_last_row": "tab:purple", "image_to_last_row": "tab:pink",
                 "object_to_text": "tab:blue"}


def plot_blocking_drops(table: pd.DataFrame, stem: Path, *, seed: int = 0, n_resamples: int = 2000) -> list[Path]:
    """N3: drop in the correct token's probability (or, with drop_of top1, each run's own top-1
    probability) per sliding-window start (left) and fixed window (right)."""
    included = table[table["included"].astype(bool) & (table["block_set"] != "none")]
    sets = sorted(set(included["block_set"]), key=lambda s: (list(BLOCK_COLOURS).index(s) if s in BLOCK_COLOURS else 99, s))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.3), gridspec_kw={"width_ratios": [3, 2]})
    sliding = included[included["window_kind"] == "sliding"]
    width = int(sliding["n_layers"].max()) if len(sliding) else 0
    if len(sliding):
        summary = grouped_mean_ci(sliding, by=["block_set", "window_start"], value="drop", seed=seed,
                                  n_resamples=n_resamples)
        for block_set in sets:
            part = summary[summary["block_set"] == block_set].sort_values("window_start")
            left.plot(part["window_start"].astype(int), part["mean"], marker="o", label=block_set,
                      color=BLOCK_COLOURS.get(block_set))
            left.fill_between(part["window_start"].astype(int), part["low"].astype(float), part["high"].astype(float),
                              color=BLOCK_COLOURS.get(block_set), alpha=0.15)
        starts = sorted(int(v) for v in sliding["window_start"].unique())
        left.set_xticks(starts if len(starts) <= 16 else starts[::max(1, len(starts) // 16)])
    left.axhline(0, color="black", linewidth=0.8)
    left.set_xlabel(f"first layer of the blocked window (up to {width} layers, truncated at the top)\n{DECODER_LAYER}")
    top1 = "drop_of" in table and (table["drop_of"].dropna() == "top1").any()
    left.set_ylabel("drop in p(each run's top-1 token)" if top1 else "drop in p(correct token)")
    left.set_title("sliding window")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    fixed = included[included["window_kind"] == "fixed"]
    if len(fixed):
        order = list(dict.fromkeys(fixed["window"]))
        summary = grouped_mean_ci(fixed, by=["block_set", "window"], value="drop", seed=seed, n_resamples=n_resamples)
        bar = 0.8 / max(1, len(sets))
        x = np.arange(len(order))
        for index, block_set in enumerate(sets):
            part = summary[summary["block_set"] == block_set].set_index("window").reindex(order)
            errors = error_bars(part["mean"], part["low"], part["high"])
            right.bar(x + (index - (len(sets) - 1) / 2) * bar, part["mean"], width=bar, yerr=errors,
                      capsize=2, color=BLOCK_COLOURS.get(block_set), label=block_set)
        spans = fixed.drop_duplicates("window").set_index("window")
        right.set_xticks(x)
        right.set_xticklabels([f"{w}\n{int(spans.loc[w, 'window_start'])}-{int(spans.loc[w, 'window_end'])}" for w in order],
                              fontsize=8)
    right.axhline(0, color="black", linewidth=0.8)
    right.set_title("fixed windows (layers, 0-indexed)")
    right.grid(axis="y", alpha=0.3)
    n_images = included["image_id"].nunique()
    figure.suptitle(f"N3 attention blocking ({n_images} images answered correctly; "
                    "95% bootstrap intervals)")
    figure.tight_layout()
    note = excluded_note(excluded_counts(table))
    if note:
        figure.text(0.01, 0.005, f"targets: {note}", fontsize=8, ha="left", va="bottom")
    return save_figure(figure, stem)
