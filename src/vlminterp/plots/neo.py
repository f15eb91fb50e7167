"""Figures of the Neo et al. experiments; each draws one summary table (`vlminterp.summaries`),
labelled from its stage's table, and writes a PNG and a PDF.

    from vlminterp.plots.neo import plot_flip_rates, plot_lens_curves, plot_blocking_drops
    plot_flip_rates(ablation_summary(ablation), ablation, Path("results/run/neo/ablation/flip_rates"))
    plot_lens_curves(lens_curves_summary(scores), scores, Path("results/run/neo/logit_lens/lens_curves"))
    plot_blocking_drops(blocking_drops_summary(blocking), blocking, Path("results/run/neo/blocking/blocking_drops"))

The intervals are the summaries' (95% percentile bootstraps over images).
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vlminterp.plots.conditions import identical_conditions, merged_label  # noqa: E402
from vlminterp.plots.organism import DECODER_LAYER, HIDDEN_STATE, save_figure  # noqa: E402
from vlminterp.stats import error_bars, excluded_counts, excluded_note  # noqa: E402

SETTING_COLOURS = {"generative": "tab:green", "polling": "tab:orange", "vqa": "tab:blue"}
FAMILY_ORDER = ["object", "random_matched", "random", "register", "high_gradient", "all_image"]


def _condition_order(conditions) -> list[str]:
    def key(condition: str):
        family = next((f for f in sorted(FAMILY_ORDER, key=len, reverse=True) if condition.startswith(f)), condition)
        digits = "".join(ch for ch in condition.rsplit("_", 1)[-1] if ch.isdigit())
        return (FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER),
                int(digits) if digits else 0, condition)
    return sorted(set(conditions), key=key)


def _ranking(condition: str) -> str | None:
    """high_gradient_b{b} and high_gradient_n{n} take the top of one attribution ranking."""
    return "high_gradient" if condition.startswith("high_gradient") else None


def duplicate_conditions(table: pd.DataFrame) -> dict[str, str]:
    """Conditions that ablate exactly the tokens of another, judged per image and setting
    (`plots.conditions`): {dropped: kept}. random_n{n} or high_gradient_n{n} with n capped at every
    image token is all_image; high_gradient_n{n} is high_gradient_b{b} when |object_b{b}| = n on
    every image."""
    rows = table[table["condition"] != "none"]
    return identical_conditions(rows, ranking=_ranking, full="all_image", keys=("image_id", "setting"),
                                order=_condition_order(rows["condition"]))


def plot_flip_rates(summary: pd.DataFrame, table: pd.DataFrame, stem: Path) -> list[Path]:
    """N1: share of correctly identified objects that flip to failure, per condition (`summary`:
    `summaries.ablation_summary`), one panel per setting (stacked, so the figure stays narrow
    enough to read inside the report); `table`, the N1 table, gives the labels.

    A bar of 0% is labelled "0", a condition a setting has no included image for "n/a" (so neither
    is mistaken for the other); conditions ablating the same tokens (`duplicate_conditions`) are
    drawn once, the tick naming all of them. VQA's panel has the summary's chance line;
    polling (target questions only: an always-"yes" answerer loses nothing) and generative have none."""
    duplicates = duplicate_conditions(table)
    table = table[~table["condition"].isin(list(duplicates))]
    included = table[table["included"].astype(bool) & (table["condition"] != "none")]
    settings = [s for s in ("generative", "polling", "vqa") if s in set(table["setting"])]
    conditions = _condition_order(table.loc[table["condition"] != "none", "condition"])
    figure, axes = plt.subplots(max(1, len(settings)), 1, sharex=True, squeeze=False,
                                figsize=(max(6.5, 0.45 * len(conditions) + 2.5), 1.9 * max(1, len(settings)) + 2.0))
    x = np.arange(len(conditions))
    for axis, setting in zip(axes[:, 0], settings):
        colour = SETTING_COLOURS.get(setting)
        part = summary[summary["setting"] == setting].set_index("condition").reindex(conditions)
        n_included = int(table[(table["setting"] == setting) & (table["condition"] == "none")
                               & table["included"].astype(bool)]["image_id"].nunique())
        axis.bar(x, part["mean"], width=0.7, yerr=error_bars(part["mean"], part["low"], part["high"]),
                 capsize=2, color=colour)
        for position, value in zip(x, part["mean"]):
            if pd.isna(value):
                axis.text(position, 0.03, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")
            elif value == 0:
                axis.text(position, 0.03, "0", ha="center", va="bottom", fontsize=8, color=colour)
        chance = part.dropna(subset=["chance"]) if "chance" in part else part.iloc[:0]
        if len(chance):
            rate, answer = float(chance["chance"].iloc[0]), str(chance["chance_answer"].iloc[0])
            axis.axhline(rate, color="black", linestyle=":", linewidth=1.2,
                         label=f"chance: blind answer \"{answer}\" for every image ({rate:.2f})")
            axis.legend(fontsize=7, loc="upper center", framealpha=0.9)
        axis.set_title(f"{setting} (n = {n_included} included images)", fontsize=9, loc="left")
        axis.set_ylim(0, 1.25)  # headroom for the chance line's legend
        axis.set_yticks([0, 0.5, 1])
        axis.grid(axis="y", alpha=0.3)
        axis.set_ylabel("flip rate", fontsize=9)
    tokens = included.groupby("condition")["n_tokens"].mean()
    bottom = axes[-1, 0]
    bottom.set_xticks(x)
    bottom.set_xticklabels([textwrap.fill(f"{merged_label(c, duplicates)} ({tokens.get(c, float('nan')):.0f} tok)", 36)
                            for c in conditions], rotation=35, ha="right", rotation_mode="anchor", fontsize=8)
    figure.suptitle("N1 token ablation: share of correct answers lost (95% bootstrap intervals)", fontsize=10)
    note = excluded_note(excluded_counts(table))
    figure.text(0.01, 0.0, "0 = no flip; n/a = no included image" + (f"; {note}" if note else ""),
                fontsize=7, ha="left", va="top", wrap=True)
    figure.tight_layout()
    return save_figure(figure, stem)


LENS_MEASURES = {"name_in_topk": "name or synonym in top-k", "name_rank1": "name ranks first among category names",
                 "name_top1": "top-1 token is the name"}


def plot_lens_curves(summary: pd.DataFrame, scores: pd.DataFrame, stem: Path) -> list[Path]:
    """N2: per layer, how often object vs background cells decode to the object's name (`summary`:
    `summaries.lens_curves_summary`; `scores`, the N2 scores, give the labels)."""
    n_categories = int(scores["n_categories"].iloc[0]) if "n_categories" in scores and len(scores) else None
    measures = [m for m in LENS_MEASURES if m in scores.columns]
    figure, axes = plt.subplots(1, len(measures), figsize=(4.6 * len(measures), 3.9), squeeze=False, sharey=True)
    for axis, measure in zip(axes[0], measures):
        curves = summary[summary["measure"] == measure]
        for region, colour in (("object", "tab:red"), ("background", "tab:gray")):
            part = curves[curves["region"] == region].sort_values("layer")
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


def plot_blocking_drops(summary: pd.DataFrame, table: pd.DataFrame, stem: Path) -> list[Path]:
    """N3: drop in the correct token's probability (or, with drop_of top1, each run's own top-1
    probability) per sliding-window start (left) and fixed window (right) (`summary`:
    `summaries.blocking_drops_summary`; `table`, the N3 table, gives the labels)."""
    included = table[table["included"].astype(bool) & (table["block_set"] != "none")]
    sets = sorted(set(included["block_set"]), key=lambda s: (list(BLOCK_COLOURS).index(s) if s in BLOCK_COLOURS else 99, s))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.3), gridspec_kw={"width_ratios": [3, 2]})
    sliding = included[included["window_kind"] == "sliding"]
    width = int(sliding["n_layers"].max()) if len(sliding) else 0
    if len(sliding):
        drops = summary[summary["window_kind"] == "sliding"]
        for block_set in sets:
            part = drops[drops["block_set"] == block_set].sort_values("window_start")
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
        drops = summary[summary["window_kind"] == "fixed"]
        bar = 0.8 / max(1, len(sets))
        x = np.arange(len(order))
        for index, block_set in enumerate(sets):
            part = drops[drops["block_set"] == block_set].set_index("window").reindex(order)
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
