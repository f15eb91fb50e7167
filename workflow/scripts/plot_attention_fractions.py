"""Rule plot_attention_fractions (K1): summary over images and the per-layer figure."""
from pathlib import Path

from vlminterp.experiments.kaduri_attention import summarize_attention_fractions
from vlminterp.io import read_table, write_table
from vlminterp.plots.kaduri import plot_attention_fractions
from vlminterp.runtime import rule_context

with rule_context(snakemake.log[0], seed=snakemake.params.seed):
    summary = summarize_attention_fractions(read_table(snakemake.input[0]), seed=snakemake.params.seed)
    write_table(summary, snakemake.output.summary)
    plot_attention_fractions(summary, Path(snakemake.output.png).with_suffix(""))
