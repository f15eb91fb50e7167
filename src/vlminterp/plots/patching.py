"""Figure of the object-patching summary (`experiments.object_patching.summarize_patching`'s table).

    plot_patching(summary, Path("results/run/patching/patching"))   # writes .png and .pdf
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from vlminterp.plots.organism import DECODER_LAYER, save_figure  # noqa: E402
from vlminterp.stats import error_bars  # noqa: E402

COLOURS = {"object": "tab:red", "same_object": "tab:blue", "background": "tab:grey"}
TITLES = {"becomes_source": "B's answer becomes A's object", "keeps_target": "B's answer stays B's object"}


def plot_patching(summary: pd.DataFrame, stem: Path) -> list[Path]:
    """Per measure a panel: its share by patched layer for each condition (95% intervals), the
    unpatched share dashed, chance (a guess among the eligible categories) dotted."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for axis, (measure, title) in zip(axes, TITLES.items()):
        part = summary[summary["measure"] == measure]
        for condition, colour in COLOURS.items():
            rows = part[part["condition"] == condition].sort_values("layer")
            if rows.empty:
                continue
            n = int(rows["n"].max())
            axis.errorbar(rows["layer"], rows["mean"], yerr=error_bars(rows["mean"], rows["low"], rows["high"]),
                          marker="o", capsize=2, color=colour, label=f"{condition} (n={n} pairs)")
        unpatched = part[part["condition"] == "none"]["mean"]
        if len(unpatched):
            axis.axhline(float(unpatched.iloc[0]), color="black", linestyle="--", linewidth=1, label="unpatched")
        if "chance" in part and part["chance"].notna().any():
            chance = float(part["chance"].dropna().iloc[0])
            axis.axhline(chance, color="black", linestyle=":", linewidth=1, label=f"chance (a guess, {chance:.2f})")
        axis.set_title(title)
        axis.set_xticks(sorted(part.loc[part["layer"] >= 0, "layer"].unique()))
        axis.set_xlabel(f"patched {DECODER_LAYER}")
        axis.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("share of pairs (top-1 answer token)")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8, loc="best")
    else:  # no target had a source of another category (one category, or no one-token names)
        axes[1].text(0.5, 0.5, "no pairs", ha="center", va="center", transform=axes[1].transAxes)
    figure.tight_layout()
    return save_figure(figure, stem)
