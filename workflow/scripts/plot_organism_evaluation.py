"""Rule plot_organism_evaluation: accuracy per task on held-out images, with intervals."""
from pathlib import Path

from vlminterp.io import read_table
from vlminterp.plots.organism import plot_evaluation
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]):
    plot_evaluation(read_table(snakemake.input[0]), Path(snakemake.output.png).with_suffix(""))
