"""Plot rules of N1-N3: one tidy table in, a PNG and a PDF out (which figure: params.kind)."""
from pathlib import Path

from vlminterp.io import read_table
from vlminterp.plots import neo
from vlminterp.runtime import rule_context

with rule_context(snakemake.log[0]):
    table, stem, p = read_table(snakemake.input[0]), Path(snakemake.output.png).with_suffix(""), snakemake.params
    if p.kind == "ablation":
        neo.plot_flip_rates(table, stem, seed=p.seed, n_resamples=p.resamples)
    elif p.kind == "logit_lens":
        neo.plot_lens_curves(table, stem, seed=p.seed, n_resamples=p.resamples)
    elif p.kind == "blocking":
        neo.plot_blocking_drops(table, stem, seed=p.seed, n_resamples=p.resamples)
    else:
        raise ValueError(f"unknown figure kind {p.kind!r}")
