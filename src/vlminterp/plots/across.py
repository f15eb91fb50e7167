"""The across-runs figure: one panel per headline quantity, runs side by side, layer quantities on a
0-1 fraction-of-depth axis (the table: `vlminterp.across_runs`)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vlminterp.plots.organism import save_figure  # noqa: E402
from vlminterp.stats import error_bars  # noqa: E402

# Quantity names as `vlminterp.across_runs` writes them (kept literal: plots/ imports no experiment code).
N1_FLIPS, K2_F1 = "N1 object-token flip rate", "K2 F1 vs unablated (all layers)"
N3_BEST, N3_CURVE = "N3 window with the largest drop", "N3 drop per window start"
K2_BEST_WINDOW, K2_START = "K2 best narrowest window (generated sees the image)", "K2 F1 per first blocked layer"
K3_BEST, K3_CURVE = "K3 best localization layer", "K3 localization accuracy per layer"
BANDS = ((N3_BEST, "N3 largest drop", "tab:red"), (K2_BEST_WINDOW, "K2 best window", "tab:blue"),
         (K3_BEST, "K3 best layer", "tab:green"))


def _label(run: str, model: str, n_layers) -> str:
    depth = f"{int(n_layers)} layers" if pd.notna(n_layers) else "depth unknown"
    return f"{run} ({model}, {depth})"


def _bars(axis, rows: pd.DataFrame, runs: list[str], colours: dict, title: str, ylabel: str) -> None:
    """Bars per condition, one per run, with intervals; control as a black diamond, chance as a
    dashed tick over the run's bar."""
    rows = rows[rows["value"].notna()]
    conditions = list(dict.fromkeys(rows["condition"]))
    width = 0.8 / max(1, len(runs))
    for index, run in enumerate(runs):
        part = rows[rows["run"] == run].set_index("condition").reindex(conditions)
        x = np.arange(len(conditions)) + (index - (len(runs) - 1) / 2) * width
        axis.bar(x, part["value"], width=width, color=colours[run],
                 yerr=error_bars(part["value"], part["low"], part["high"]), capsize=2)
        if part["control_value"].notna().any():
            axis.errorbar(x, part["control_value"], yerr=error_bars(part["control_value"], part["control_low"],
                                                                    part["control_high"]),
                          fmt="D", color="black", markersize=4, capsize=2)
        for xi, chance in zip(x, part["chance"]):
            if pd.notna(chance):
                axis.hlines(chance, xi - width / 2, xi + width / 2, colors="black", linestyles="--", linewidth=1)
    axis.set_xticks(np.arange(len(conditions)))
    axis.set_xticklabels(conditions, fontsize=7, rotation=15)
    axis.set_ylim(0, 1.05)
    axis.set_title(title, fontsize=9)
    axis.set_ylabel(ylabel, fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    if not conditions:
        axis.text(0.5, 0.5, "no run has this table", ha="center", transform=axis.transAxes)


def _curve(axis, rows: pd.DataFrame, runs: list[str], colours: dict, title: str, ylabel: str,
           best: pd.DataFrame) -> None:
    """A value per layer (x: the layer's first depth fraction) per run, intervals shaded, the `best`
    rows starred, chance dashed and the control dotted in the run's colour."""
    for run in runs:
        part = rows[(rows["run"] == run) & rows["depth_start"].notna()].sort_values("depth_start")
        if not len(part):
            continue
        x = part["depth_start"].astype(float)
        axis.plot(x, part["value"], marker="o", color=colours[run])
        axis.fill_between(x, part["low"].astype(float), part["high"].astype(float), color=colours[run], alpha=0.15)
        if part["chance"].notna().any():
            axis.axhline(float(part["chance"].dropna().iloc[0]), color=colours[run], linestyle="--", linewidth=1)
        if part["control_value"].notna().any():
            axis.plot(x, part["control_value"].astype(float), color=colours[run], linestyle=":", linewidth=1)
        top = best[(best["run"] == run) & best["value"].notna()]
        axis.plot(top["depth_start"], top["value"], marker="*", markersize=14, color=colours[run],
                  markeredgecolor="black", linestyle="none")
    axis.set_xlim(-0.02, 1.02)
    axis.set_xlabel("first layer, fraction of depth", fontsize=8)
    axis.set_ylabel(ylabel, fontsize=8)
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)


def _bands(axis, table: pd.DataFrame, runs: list[str]) -> None:
    """Each run's bands that matter (N3 largest drop, K2 best window, K3 best layer) as spans of depth."""
    for index, run in enumerate(runs):
        for offset, (quantity, label, colour) in enumerate(BANDS):
            got = table[(table["run"] == run) & (table["quantity"] == quantity) & table["depth_start"].notna()]
            if len(got):
                start, end = float(got["depth_start"].iloc[0]), float(got["depth_end"].iloc[0])
                axis.barh(index + (offset - 1) * 0.25, end - start, left=start, height=0.22, color=colour,
                          label=label if index == 0 else None)
    axis.set_yticks(range(len(runs)))
    axis.set_yticklabels(runs, fontsize=8)
    axis.set_xlim(0, 1)
    axis.set_xlabel("fraction of depth", fontsize=8)
    axis.set_title("the layer band that matters", fontsize=9)
    axis.legend(fontsize=7, loc="best")
    axis.grid(axis="x", alpha=0.3)


def plot_across_runs(table: pd.DataFrame, stem: Path) -> list[Path]:
    """Six panels (N1, K2 conditions, N3 / K2 start-layer / K3 curves over depth, the bands); PNG + PDF."""
    runs = list(dict.fromkeys(table["run"]))
    colours = {run: plt.get_cmap("tab10")(i % 10) for i, run in enumerate(runs)}
    of = lambda quantity: table[table["quantity"] == quantity]  # noqa: E731
    figure, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    _bars(axes[0, 0], of(N1_FLIPS), runs, colours, "N1: object-token flip rate (diamond: as many random tokens)",
          "share of correct answers flipped")
    _bars(axes[0, 1], of(K2_F1), runs, colours, "K2: image knocked out of ..., all layers", "F1 vs unablated")
    _curve(axes[0, 2], of(N3_CURVE), runs, colours,
           "N3: blocking the object's tokens, sliding window (dotted: non-object tokens)", "drop in p(correct)",
           of(N3_BEST))
    _curve(axes[1, 0], of(K2_START), runs, colours, "K2: image blocked from this layer on", "F1 vs unablated",
           of(None))
    _curve(axes[1, 1], of(K3_CURVE), runs, colours, "K3: attention peak on the object, per layer",
           "localization accuracy", of(K3_BEST))
    _bands(axes[1, 2], table, runs)
    first = table.drop_duplicates("run")
    handles = [plt.Line2D([], [], color=colours[r.run], linewidth=6) for r in first.itertuples()]
    figure.legend(handles, [_label(r.run, r.model, r.n_layers) for r in first.itertuples()],
                  loc="upper center", ncol=min(4, len(runs)), fontsize=8)
    figure.text(0.01, 0.005, "bars and shading: 95% bootstrap intervals; dashed: chance; diamond, dotted: control; "
                "star: the best band", fontsize=7)
    figure.tight_layout(rect=(0, 0.02, 1, 0.94))
    return save_figure(figure, stem)
