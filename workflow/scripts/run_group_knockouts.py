"""Rule run_group_knockouts (K2): every knockout condition of each image of one shard, judged offline."""
from vlminterp.experiments.kaduri_common import dataset_vocabulary, load_images_table, open_session
from vlminterp.experiments.kaduri_knockout import KnockoutSpec, group_knockouts
from vlminterp.io import write_table
from vlminterp.runtime import rule_context
from vlminterp.sharding import shard_rows
from vlminterp.specs import build_spec

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    spec = build_spec(KnockoutSpec, params.spec, where="kaduri.knockout", max_new_tokens=params.max_new_tokens)
    images = shard_rows(load_images_table(snakemake.input.images), snakemake.wildcards.shard, params.images_per_shard)
    session = open_session(**params.session)
    vocabulary = dataset_vocabulary(params.vocabulary, session.dataset)
    write_table(group_knockouts(session, images, spec, vocabulary), snakemake.output[0])
