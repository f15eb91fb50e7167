"""Figures of the Kaduri et al. experiments (K1-K4); each reads a summary table only.

    from vlminterp.plots.kaduri import (plot_attention_fractions, plot_knockout_conditions,
        plot_knockout_start_layer, plot_knockout_windows, plot_localization, plot_reprompting)
    plot_attention_fractions(summarize_attention_fractions(table), Path("results/.../fractions"))
    ...                                                              # -> .png and .pdf

Summaries come from the `summarize_*` functions of `vlminterp.experiments.kaduri.*`.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vlminterp.summaries import method_label  # noqa: E402
from vlminterp.plots.conditions import identical_conditions, merged_label  # noqa: E402
from vlminterp.plots.organism import DECODER_LAYER, save_figure  # noqa: E402
from vlminterp.stats import error_bars  # noqa: E402

GROUP_COLORS = {"bos": "#444444", "system": "#9e9e9e", "image": "#1f77b4", "query": "#ff7f0e",
                "generated": "#2ca02c"}
GROUP_LABELS = {"bos": "BOS (sink)", "system": "system (rest)", "image": "image", "query": "query",
                "generated": "generated"}
CONDITION_COLORS = {"none": "#2ca02c", "image->generated": "#1f77b4", "image->query": "#ff7f0e",
                    "image->query+generated": "#d62728"}
METHOD_STYLE = {"single_turn": ("#8c564b", "X"), "full_image": ("black", "*"), "full_cache": ("#7f7f7f", "P"), "prompt_cache": ("#ff7f0e", "s"),
                "image_topk": ("#1f77b4", "o"), "image_topk_after_prompt": ("#17becf", "v"),
                "prompt_image_topk": ("#9467bd", "D"),
                "description_text": ("#2ca02c", "^")}


def _require(table: pd.DataFrame, columns: set[str], what: str) -> None:
    missing = columns - set(table.columns)
    if missing:
        raise ValueError(f"{what} lacks columns {sorted(missing)}")


def _layer_ticks(axis, layers) -> None:
    layers = sorted(set(int(l) for l in layers))
    step = max(1, int(np.ceil(len(layers) / 16)))
    axis.set_xticks(layers[::step])


# ---- K1 -----------------------------------------------------------------------------------------------
def plot_attention_fractions(summary: pd.DataFrame, stem: Path, title: str = "K1: where generated tokens attend") -> list[Path]:
    """Left: stacked mean shares per layer. Right: each group's share with its 95% interval, and
    its share of the keys (dashed: attention spread uniformly)."""
    _require(summary, {"layer", "group", "mean", "low", "high", "key_share", "n_images"}, "attention summary")
    groups = [g for g in GROUP_COLORS if g in set(summary["group"])]
    wide = summary.pivot(index="layer", columns="group", values="mean")[groups]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    bottom = np.zeros(len(wide))
    for group in groups:
        left.bar(wide.index, wide[group], bottom=bottom, color=GROUP_COLORS[group], label=GROUP_LABELS[group],
                 width=0.85)
        bottom += wide[group].to_numpy()
    left.set_xlabel(DECODER_LAYER)
    left.set_ylabel("share of attention (heads averaged)")
    left.set_ylim(0, 1)
    left.set_title("mean over generated tokens and images")
    _layer_ticks(left, wide.index)
    left.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for group in groups:
        part = summary[summary["group"] == group].sort_values("layer")
        color = GROUP_COLORS[group]
        right.plot(part["layer"], part["mean"], marker="o", color=color, label=GROUP_LABELS[group])
        right.fill_between(part["layer"], part["low"], part["high"], color=color, alpha=0.2)
        right.plot(part["layer"], part["key_share"], linestyle="--", color=color, linewidth=1)
    right.set_xlabel(DECODER_LAYER)
    right.set_ylabel("share of attention")
    right.set_ylim(0, 1)
    right.set_title("95% intervals over images; dashed = share of keys")
    _layer_ticks(right, summary["layer"])
    right.grid(True, alpha=0.3)
    n = int(summary["n_images"].max()) if len(summary) else 0
    figure.suptitle(f"{title} (n = {n} images)")
    figure.tight_layout()
    return save_figure(figure, stem)


# ---- K2 -----------------------------------------------------------------------------------------------
def plot_knockout_conditions(summary: pd.DataFrame, stem: Path, chance_recall: float | None = None,
                             title: str = "K2: knockout between token groups") -> list[Path]:
    """F1 (against the unablated description) of the all-layer conditions with 95% intervals,
    recall, and F1 against the annotations."""
    _require(summary, {"condition", "family", "mean", "low", "high", "recall", "n_images"}, "knockout summary")
    main = summary[summary["family"].isin(["none", "all_layers"])].reset_index(drop=True)
    figure, axis = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(main))
    errors = error_bars(main["mean"], main["low"], main["high"])
    colors = [CONDITION_COLORS.get(c, "tab:gray") for c in main["condition"]]
    axis.bar(x - 0.2, main["mean"], width=0.4, yerr=errors, capsize=3, color=colors,
             label="F1 vs unablated description")
    axis.bar(x + 0.2, main["recall"], width=0.4, color=colors, alpha=0.4, hatch="//", label="recall")
    if "gt_f1" in main:
        axis.scatter(x - 0.2, main["gt_f1"], marker="D", color="black", zorder=3, label="F1 vs annotations")
    if chance_recall is not None:
        axis.axhline(chance_recall, color="tab:red", linestyle=":", label=f"chance recall ({chance_recall:.2f})")
    axis.set_xticks(x)
    axis.set_xticklabels([c.replace("->", " -> ").replace("+", "+\n") for c in main["condition"]], fontsize=9)
    axis.set_ylim(0, 1.08)
    axis.set_ylabel("score (mean over images)")
    n = int(main["n_images"].max()) if len(main) else 0
    axis.set_title(f"{title} (n = {n} images, all layers)")
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    axis.grid(True, axis="y", alpha=0.3)
    return save_figure(figure, stem)


def plot_knockout_start_layer(summary: pd.DataFrame, stem: Path,
                              title: str = "K2: knockout from layer l onward") -> list[Path]:
    """F1 against the first blocked layer of the sweep (that layer .. L-1 blocked)."""
    _require(summary, {"family", "target", "layer_start", "mean", "low", "high"}, "knockout summary")
    part = summary[summary["family"] == "from_layer"].sort_values("layer_start")
    figure, axis = plt.subplots(figsize=(7, 4.2))
    if len(part):
        target = part["target"].iloc[0]
        axis.plot(part["layer_start"], part["mean"], marker="o", color="tab:blue", label=f"image -> {target}")
        axis.fill_between(part["layer_start"], part["low"], part["high"], color="tab:blue", alpha=0.2,
                          label="95% interval")
        _layer_ticks(axis, part["layer_start"])
    reference = summary[summary["condition"] == "image->query+generated"]
    if len(reference):
        axis.axhline(float(reference["mean"].iloc[0]), color="tab:red", linestyle=":",
                     label="image -> query+generated, all layers")
    axis.axhline(1.0, color="tab:green", linestyle="--", linewidth=1, label="unablated")
    axis.set_xlabel(f"first blocked layer l: {DECODER_LAYER}")
    axis.set_ylabel("F1 vs unablated description")
    axis.set_ylim(0, 1.08)
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    return save_figure(figure, stem)


def plot_knockout_windows(summary: pd.DataFrame, stem: Path,
                          title: str = "K2: generated tokens see the image only in layers [a, b]") -> list[Path]:
    """Heat map of F1 over the grid's windows [a, b] (a = first, b = last layer where the image is
    visible) for the generated target (the only one in tables without a target column)."""
    _require(summary, {"family", "layer_start", "layer_end", "mean"}, "knockout summary")
    part = summary[summary["family"] == "window"]
    if "target" in part:
        part = part[part["target"].fillna("generated") == "generated"]
    starts = sorted(set(part["layer_start"].astype(int)))
    ends = sorted(set(part["layer_end"].astype(int)))
    grid = np.full((len(starts), len(ends)), np.nan)
    for row in part.itertuples(index=False):
        grid[starts.index(int(row.layer_start)), ends.index(int(row.layer_end))] = row.mean
    figure, axis = plt.subplots(figsize=(max(4.5, 0.55 * len(ends) + 3), max(3.5, 0.45 * len(starts) + 2)))
    image = axis.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="upper", aspect="auto")
    if grid.size <= 400:
        for i in range(len(starts)):
            for j in range(len(ends)):
                if not np.isnan(grid[i, j]):
                    axis.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                              color="white" if grid[i, j] < 0.6 else "black")
    axis.set_xticks(range(len(ends)), [str(e) for e in ends])
    axis.set_yticks(range(len(starts)), [str(s) for s in starts])
    axis.set_xlabel(f"b: last layer where the image is visible ({DECODER_LAYER})")
    axis.set_ylabel(f"a: first layer where the image is visible ({DECODER_LAYER})")
    axis.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axis, label="F1 vs unablated description")
    return save_figure(figure, stem)


# ---- K3 -----------------------------------------------------------------------------------------------
def plot_localization(per_layer: pd.DataFrame, per_band: pd.DataFrame, stem: Path,
                      title: str = "K3: attention of generated object words peaks on the object") -> list[Path]:
    """Localization accuracy per layer (left) and per band of layers (right), 95% intervals, chance."""
    for table, what in ((per_layer, "per-layer summary"), (per_band, "per-band summary")):
        _require(table, {"layer_start", "layer_end", "accuracy", "low", "high", "chance", "n_mentions"}, what)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.3), gridspec_kw={"width_ratios": [3, 2]})
    if per_layer.empty:  # no description named an object (e.g. random weights): a figure that says so
        for axis in (left, right):
            axis.text(0.5, 0.5, "no object mentions in the descriptions:\nnothing to localize", ha="center",
                      va="center", transform=axis.transAxes)
            axis.set_axis_off()
        figure.suptitle(title)
        return save_figure(figure, stem)
    left.plot(per_layer["layer_start"], per_layer["accuracy"], marker="o", color="tab:blue", label="accuracy")
    left.fill_between(per_layer["layer_start"], per_layer["low"], per_layer["high"], color="tab:blue", alpha=0.2,
                      label="95% interval")
    left.plot(per_layer["layer_start"], per_layer["chance"], linestyle=":", color="tab:red", label="chance")
    left.set_xlabel(DECODER_LAYER)
    left.set_ylabel("localization accuracy (heads averaged)")
    left.set_ylim(0, 1.05)
    _layer_ticks(left, per_layer["layer_start"])
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    n = int(per_layer["n_mentions"].max()) if len(per_layer) else 0
    excluded = int(per_layer["n_excluded"].max()) if "n_excluded" in per_layer and len(per_layer) else 0
    left.set_title(f"per layer (n = {n} object mentions" + (f"; {excluded} excluded: no visible object cell)"
                                                           if excluded else ")"))
    x = np.arange(len(per_band))
    errors = error_bars(per_band["accuracy"], per_band["low"], per_band["high"])
    right.bar(x, per_band["accuracy"], yerr=errors, capsize=3, color="tab:blue")
    right.scatter(x, per_band["chance"], marker="_", s=400, color="tab:red", zorder=3, label="chance")
    right.set_xticks(x, [f"{a}-{b}" for a, b in zip(per_band["layer_start"], per_band["layer_end"])])
    right.set_xlabel(f"band of layers ({DECODER_LAYER})")
    right.set_ylim(0, 1.05)
    right.grid(True, axis="y", alpha=0.3)
    right.legend(fontsize=8)
    right.set_title("per band of layers")
    figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, stem)


# ---- K4 -----------------------------------------------------------------------------------------------
def duplicate_methods(answers: pd.DataFrame) -> dict[str, str]:
    """K4 labels that keep exactly the tokens of another (`plots.conditions`): {dropped: kept}. One
    method at two fractions keeps the same top-k positions when k = floor(f n) agrees on every image
    (on a 36-token image, 2% and 5% keep one token each)."""
    labelled = answers.assign(label=[method_label(m, f) for m, f in zip(answers["method"], answers["k_fraction"])])
    order = list(dict.fromkeys(labelled.sort_values("k_fraction", kind="stable")["label"]))
    ranked = {label: method if pd.notna(fraction) else None  # top-k of one method's attention ranking
              for label, method, fraction in zip(labelled["label"], labelled["method"], labelled["k_fraction"])}
    return identical_conditions(labelled, ranking=ranked.get, condition="label", tokens="k_tokens", order=order)


def plot_reprompting(summary: pd.DataFrame, stem: Path, settings: tuple[str, ...] = ("random", "popular", "adversarial"),
                     title: str = "K4: re-prompting from a compressed cache",
                     answers: pd.DataFrame | None = None) -> list[Path]:
    """Accuracy against context tokens, one point per method (and k), one panel per POPE setting;
    dotted, chance (each setting is balanced: a constant answer scores 50%). With the per-question
    `answers` table, labels keeping the same tokens on every image (`duplicate_methods`) are drawn
    once, their label naming both."""
    _require(summary, {"method", "label", "setting", "accuracy", "accuracy_low", "accuracy_high",
                       "context_tokens", "n_questions"}, "re-prompting summary")
    duplicates = duplicate_methods(answers) if answers is not None else {}
    if duplicates:
        kept_tokens = answers.groupby([method_label(m, f) for m, f in zip(answers["method"], answers["k_fraction"])])[
            "k_tokens"].unique()
        summary = summary[~summary["label"].isin(list(duplicates))].copy()
        summary["merged"] = summary["label"].isin(list(duplicates.values()))
        summary["label"] = [merged_label(label, duplicates) + (
            f" ({_tokens_note(kept_tokens[label])})" if merged else "")
            for label, merged in zip(summary["label"], summary["merged"])]
    settings = tuple(s for s in settings if s in set(summary["setting"])) or ("all",)
    figure, axes = plt.subplots(1, len(settings), figsize=(3.3 * len(settings) + 0.6, 4.0), squeeze=False,
                                sharey=True)
    for axis, setting in zip(axes[0], settings):
        part = summary[summary["setting"] == setting]
        for row in part.itertuples(index=False):
            color, marker = METHOD_STYLE.get(row.method, ("tab:gray", "o"))
            # hollow rings drawn larger and on top, so they stay visible on the filled marker they
            # share a point with: full_cache around full_image, top 2% around top 5% (when they
            # differ: identical ones are merged above)
            hollow = ("2%" in row.label and not getattr(row, "merged", False)) or row.method == "full_cache"
            size = {"full_image": 9, "full_cache": 14}.get(row.method, 12 if hollow else 7)
            axis.errorbar(row.context_tokens, row.accuracy,
                          yerr=error_bars(row.accuracy, row.accuracy_low, row.accuracy_high),
                          fmt=marker, color=color, markersize=size, capsize=3, zorder=4 if hollow else 3,
                          markeredgewidth=1.5 if hollow else 1.0,
                          fillstyle="none" if hollow else "full", label=row.label)
        axis.axhline(0.5, color="tab:red", linestyle=":", linewidth=1, label="chance: constant answer (50%)")
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_xlabel("context tokens before the question (log)")
        axis.set_title(f"POPE {setting} (n = {int(part['n_questions'].max()) if len(part) else 0} questions)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("accuracy (yes/no)")
    axes[0][0].set_ylim(0, 1.05)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8, ncol=3,
                  title="method")  # below the panels: the figure stays narrow enough for the report
    figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, stem)


def _tokens_note(counts) -> str:
    """"1 token" when every image keeps the same number, else "same k per image"."""
    values = sorted(int(c) for c in counts)
    return (f"{values[0]} token" + ("s" if values[0] != 1 else "")) if len(values) == 1 else "same k per image"
