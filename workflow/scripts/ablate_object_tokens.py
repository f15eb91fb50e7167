"""Rule ablate_object_tokens: N1 on one shard of the targets (one row per image x setting x condition)."""
from vlminterp.experiments import stages
from vlminterp.io import write_table
from vlminterp.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    table = stages.token_ablation(session=params.session, spec=params.ablation, prompts=params.prompts,
                                  selection=snakemake.input.selection, cells=snakemake.input.cells,
                                  mean=snakemake.input.mean, shard=snakemake.wildcards.shard,
                                  images_per_shard=params.images_per_shard, seed=params.seed,
                                  questions=snakemake.input.get("questions"))
    write_table(table, snakemake.output[0])
