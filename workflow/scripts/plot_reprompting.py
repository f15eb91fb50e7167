"""Rule plot_reprompting (K4): accuracy, POPE F1, yes-ratio and context size per method, from the
summary table (the answers name the methods that keep the same tokens)."""
from pathlib import Path

from vlminterp.io import read_table
from vlminterp.plots.kaduri import plot_reprompting
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]):
    plot_reprompting(read_table(snakemake.input.summary), Path(snakemake.output.png).with_suffix(""),
                     answers=read_table(snakemake.input.answers))
