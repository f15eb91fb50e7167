"""Rule plot_localization (K3): localization accuracy per layer and per band of layers, from the
summary table (its `grouping` column tells them apart from each other and from the eighths of the
depth that the paper comparison reads)."""
from pathlib import Path

from vlminterp.io import read_table
from vlminterp.plots.kaduri import plot_localization
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]):
    summary = read_table(snakemake.input[0])
    per_layer = summary[summary["grouping"] == "layer"].drop(columns="grouping").reset_index(drop=True)
    per_band = summary[summary["grouping"].str.startswith("band of")].drop(columns="grouping").reset_index(drop=True)
    plot_localization(per_layer, per_band, Path(snakemake.output.png).with_suffix(""))
