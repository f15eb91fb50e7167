"""Figures of the model organism: training curves and evaluation accuracy.

    from vlminterp.plots.organism import plot_training_curves, plot_evaluation
    plot_training_curves(losses, Path("results/organism/training_curves"))    # -> .png and .pdf
    plot_evaluation(summarize_evaluation(table), Path("results/organism/evaluation"))

Both functions only read tidy tables (the loss table of ``train_organism`` and the summary of
``summarize_evaluation``) and write the PNG and the PDF atomically next to each other.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from vlminterp.io import atomic_path  # noqa: E402
from vlminterp.stats import error_bars  # noqa: E402

TARGET_ACCURACY = 0.95
STAGE_TITLES = {"vision": "Stage 0: vision tower (per-patch labels)", "text": "Stage 1: LM on text alone (every token)",
                "align": "Stage 2: projector alone (image -> description)",
                "instruct": "Stage 3: projector + LM (answer tokens)"}


# One layer numbering on every figure's axis: decoder layers count from 0 (the first transformer
# block; the embedding is not a layer); the logit lens reads hidden states, the embedding output
# and then each decoder layer's output.
DECODER_LAYER = "decoder layer (0 = first block)"
HIDDEN_STATE = "hidden state (0 = embedding output, l = output of decoder layer l - 1)"


def save_figure(figure: plt.Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf`` atomically; return both paths.

    The PDF carries no creation date, so the same figure gives the same bytes on every run."""
    paths = []
    for suffix in (".png", ".pdf"):
        path = Path(stem).with_suffix(suffix)
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=suffix[1:], dpi=150, bbox_inches="tight",
                           metadata={"CreationDate": None} if suffix == ".pdf" else None)
        paths.append(path)
    plt.close(figure)
    return paths


def plot_training_curves(losses: pd.DataFrame, stem: Path, smooth: int = 5) -> list[Path]:
    """Loss per task against step, one panel per stage (rolling mean over ``smooth`` log points)."""
    missing = {"step", "stage", "task", "loss"} - set(losses.columns)
    if missing:
        raise ValueError(f"loss table lacks columns {sorted(missing)}")
    stages = [s for s in STAGE_TITLES if s in set(losses["stage"])]
    stages += sorted(set(losses["stage"]) - set(stages))
    if not stages:
        raise ValueError("loss table is empty")
    columns = min(2, len(stages))
    rows = -(-len(stages) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4 * rows), squeeze=False, layout="constrained")
    for axis in axes.flat[len(stages):]:
        axis.set_visible(False)
    for axis, stage in zip(axes.flat, stages):
        part = losses[losses["stage"] == stage]
        for task, rows in part.groupby("task", sort=True):
            rows = rows.sort_values("step")
            smoothed = rows["loss"].rolling(smooth, min_periods=1).mean()
            axis.plot(rows["step"], smoothed, label=task, linewidth=2.2 if task == "all" else 1.4,
                      color="black" if task == "all" else None)
        axis.set_yscale("log")
        axis.set_xlabel("training step")
        axis.set_ylabel("cross-entropy loss (log scale)")
        axis.set_title(STAGE_TITLES.get(stage, stage))
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(title="task", fontsize=8)
    figure.suptitle("Model organism training curves")
    return save_figure(figure, stem)


def plot_evaluation(summary: pd.DataFrame, stem: Path, title: str = "Model organism on held-out images") -> list[Path]:
    """Accuracy per task with 95% intervals, strict accuracy, the 95% target line and, where the
    summary gives one, each task's chance (a black dash on its accuracy bar)."""
    missing = {"task", "n", "accuracy", "strict_accuracy", "ci_low", "ci_high"} - set(summary.columns)
    if missing:
        raise ValueError(f"evaluation summary lacks columns {sorted(missing)}")
    figure, axis = plt.subplots(figsize=(1.3 * len(summary) + 3, 4))
    x = range(len(summary))
    errors = error_bars(summary["accuracy"], summary["ci_low"], summary["ci_high"])
    axis.bar([i - 0.2 for i in x], summary["accuracy"], width=0.4, yerr=errors, capsize=3, label="accuracy",
             color="tab:blue")
    axis.bar([i + 0.2 for i in x], summary["strict_accuracy"], width=0.4, label="strict (exact answer)",
             color="tab:gray")
    axis.axhline(TARGET_ACCURACY, color="tab:red", linestyle="--", linewidth=1.2, label="95% target")
    if "chance" in summary and summary["chance"].notna().any():  # summaries written before #27 lack it
        axis.scatter([i - 0.2 for i in x], summary["chance"], marker="_", s=500, linewidths=2, color="black",
                     zorder=3, label="chance: commonest answer to every question")
    axis.set_xticks(list(x))
    axis.set_xticklabels([f"{t}\n(n={n})" for t, n in zip(summary["task"], summary["n"])])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("accuracy (greedy decoding)")
    axis.set_xlabel("task")
    axis.set_title(title)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # clear of the bars and dashes
    axis.grid(True, axis="y", alpha=0.3)
    return save_figure(figure, stem)
