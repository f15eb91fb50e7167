"""Rule answer_reprompt_questions (K4): each question answered from each cache selection, one shard of images."""
from vlminterp.experiments import stages
from vlminterp.io import write_table
from vlminterp.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    table = stages.reprompting(session=params.session, spec=params.spec, images=snakemake.input.images,
                               questions=snakemake.input.questions, shard=snakemake.wildcards.shard,
                               images_per_shard=params.images_per_shard)
    write_table(table, snakemake.output[0])
