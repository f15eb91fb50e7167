"""Rule block_object_attention: N3 on one shard of the targets (one row per image x block set x window)."""
from vlminterp.experiments import stages
from vlminterp.io import write_table
from vlminterp.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    table = stages.attention_blocking(session=params.session, spec=params.blocking, prompts=params.prompts,
                                      selection=snakemake.input.selection, cells=snakemake.input.cells,
                                      shard=snakemake.wildcards.shard, images_per_shard=params.images_per_shard,
                                      questions=snakemake.input.get("questions"))
    write_table(table, snakemake.output[0])
