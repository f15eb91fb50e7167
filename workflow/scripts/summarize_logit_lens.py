"""Rule summarize_logit_lens: N2's per-category breakdown and permuted-label null control."""
from vlminterp.experiments.neo_logit_lens import summarize_lens
from vlminterp.io import read_table, write_table
from vlminterp.runtime import rule_context

with rule_context(snakemake.log[0]):
    by_category, null_control = summarize_lens(read_table(snakemake.input[0]))
    write_table(by_category, snakemake.output.by_category)
    write_table(null_control, snakemake.output.null_control)
