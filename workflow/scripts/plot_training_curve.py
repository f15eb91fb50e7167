"""Rule plot_training_curve: loss per step, task and stage of the organism's training."""
from pathlib import Path

from vlminterp.io import read_table
from vlminterp.plots.organism import plot_training_curves
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]):
    plot_training_curves(read_table(Path(snakemake.input.model) / "losses.csv"), Path(snakemake.output.png).with_suffix(""))
