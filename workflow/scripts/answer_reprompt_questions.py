"""Rule answer_reprompt_questions (K4): each question answered from each cache selection, one shard of images."""
from vlminterp.experiments.kaduri_common import load_images_table, open_session
from vlminterp.experiments.kaduri_reprompt import RepromptSpec, reprompting
from vlminterp.io import read_table, write_table
from vlminterp.runtime import rule_context
from vlminterp.sharding import shard_rows
from vlminterp.specs import build_spec

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    spec = build_spec(RepromptSpec, params.spec, where="kaduri.reprompt", max_new_tokens=params.max_new_tokens)
    images = shard_rows(load_images_table(snakemake.input.images), snakemake.wildcards.shard, params.images_per_shard)
    questions = read_table(snakemake.input.questions)
    session = open_session(**params.session)
    write_table(reprompting(session, images, questions, spec), snakemake.output[0])
