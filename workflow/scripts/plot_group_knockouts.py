"""Rule plot_group_knockouts (K2): F1 per condition, per start layer and per window, with a summary."""
from pathlib import Path

from vlminterp.data.coco import CocoDataset
from vlminterp.experiments.kaduri_knockout import knockout_chance, summarize_knockouts
from vlminterp.io import read_table, write_table
from vlminterp.plots.kaduri import plot_knockout_conditions, plot_knockout_start_layer, plot_knockout_windows
from vlminterp.runtime import rule_context

out = snakemake.output
with rule_context(snakemake.log[0], seed=snakemake.params.seed):
    table = read_table(snakemake.input.table)
    n_categories = len(CocoDataset.load(snakemake.params.dataset_dir, snakemake.params.split).category_names())
    summary = summarize_knockouts(table, seed=snakemake.params.seed)
    chance = knockout_chance(table, n_categories)
    summary["chance_recall"] = chance
    write_table(summary, out.summary)
    plot_knockout_conditions(summary, Path(out.conditions).with_suffix(""), chance_recall=chance)
    plot_knockout_start_layer(summary, Path(out.start_layer).with_suffix(""))
    plot_knockout_windows(summary, Path(out.windows).with_suffix(""))
