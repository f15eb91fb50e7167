"""Rule localize_objects (K3): attention peaks of generated object words, one shard of images."""
from vlminterp.experiments import stages
from vlminterp.io import write_table
from vlminterp.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    table = stages.localization(session=params.session, spec=params.spec, images=snakemake.input.images,
                        shard=snakemake.wildcards.shard, images_per_shard=params.images_per_shard)
    write_table(table, snakemake.output[0])
