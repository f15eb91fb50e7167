"""Rule plot_object_patching: the object-patching figure from its summary table."""
from pathlib import Path

from vlminterp.io import read_table
from vlminterp.plots.patching import plot_patching
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]):
    plot_patching(read_table(snakemake.input[0]), Path(snakemake.output.png).with_suffix(""))
