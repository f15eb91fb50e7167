"""Plot rules of N1-N3: a summary table drawn, labelled from its stage's table; a PNG and a PDF
out (which figure: params.kind)."""
from pathlib import Path

from vlminterp.io import read_table
from vlminterp.plots import neo
from vlminterp.workflow.runtime import rule_context

FIGURES = {"ablation": neo.plot_flip_rates, "logit_lens": neo.plot_lens_curves, "blocking": neo.plot_blocking_drops}

with rule_context(snakemake.log[0]):
    kind = snakemake.params.kind
    if kind not in FIGURES:
        raise ValueError(f"unknown figure kind {kind!r}")
    FIGURES[kind](read_table(snakemake.input.summary), read_table(snakemake.input.table),
                  Path(snakemake.output.png).with_suffix(""))
