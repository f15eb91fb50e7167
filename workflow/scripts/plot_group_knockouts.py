"""Rule plot_group_knockouts (K2): F1 per condition, per start layer and per window, from the summary
table (its chance recall a column of it)."""
from pathlib import Path

from vlminterp.io import read_table
from vlminterp.plots.kaduri import plot_knockout_conditions, plot_knockout_start_layer, plot_knockout_windows
from vlminterp.workflow.runtime import rule_context

out = snakemake.output
with rule_context(snakemake.log[0]):
    summary = read_table(snakemake.input[0])
    chance = float(summary["chance_recall"].iloc[0]) if len(summary) else float("nan")
    plot_knockout_conditions(summary, Path(out.conditions).with_suffix(""), chance_recall=chance)
    plot_knockout_start_layer(summary, Path(out.start_layer).with_suffix(""))
    plot_knockout_windows(summary, Path(out.windows).with_suffix(""))
