"""Rule plot_attention_fractions (K1): the per-layer figure of the summary table."""
from pathlib import Path

from vlminterp.io import read_table
from vlminterp.plots.kaduri import plot_attention_fractions
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]):
    plot_attention_fractions(read_table(snakemake.input[0]), Path(snakemake.output.png).with_suffix(""))
