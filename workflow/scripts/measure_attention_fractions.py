"""Rule measure_attention_fractions (K1): attention shares of the generated tokens, one shard of images."""
from vlminterp.experiments import stages
from vlminterp.io import write_table
from vlminterp.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    table = stages.attention_fractions(session=params.session, spec=params.spec, images=snakemake.input.images,
                        shard=snakemake.wildcards.shard, images_per_shard=params.images_per_shard)
    write_table(table, snakemake.output[0])
