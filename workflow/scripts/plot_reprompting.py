"""Rule plot_reprompting (K4): accuracy, POPE F1, yes-ratio and context size per method."""
from pathlib import Path

from vlminterp.experiments.kaduri_reprompt import summarize_reprompting
from vlminterp.io import read_table, write_table
from vlminterp.plots.kaduri import plot_reprompting
from vlminterp.runtime import rule_context

with rule_context(snakemake.log[0], seed=snakemake.params.seed):
    answers = read_table(snakemake.input[0])
    summary = summarize_reprompting(answers, seed=snakemake.params.seed)
    write_table(summary, snakemake.output.summary)
    plot_reprompting(summary, Path(snakemake.output.png).with_suffix(""), answers=answers)
