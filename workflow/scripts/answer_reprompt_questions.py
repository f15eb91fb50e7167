"""Rule answer_reprompt_questions (K4): each question answered from each cache selection, one shard of images."""
from vlminterp.experiments.kaduri_common import run_shard
from vlminterp.experiments.kaduri_reprompt import RepromptSpec, reprompting
from vlminterp.io import read_table, write_table
from vlminterp.runtime import rule_context
from vlminterp.specs import build_spec

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    spec = build_spec(RepromptSpec, params.spec, where="kaduri.reprompt", max_new_tokens=params.max_new_tokens)
    write_table(run_shard(reprompting, spec, images=snakemake.input.images, shard=snakemake.wildcards.shard,
                          images_per_shard=params.images_per_shard, session=params.session,
                          questions=read_table(snakemake.input.questions)), snakemake.output[0])
