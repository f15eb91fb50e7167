"""Gather rules: concatenate the per-shard tables of a stage, in shard order, into one table."""
from vlminterp.io import write_table
from vlminterp.workflow.runtime import rule_context
from vlminterp.workflow.sharding import gather_shards

with rule_context(snakemake.log[0]):
    write_table(gather_shards(snakemake.input), snakemake.output[0])
