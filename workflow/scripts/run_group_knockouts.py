"""Rule run_group_knockouts (K2): every knockout condition of each image of one shard, judged offline."""
from vlminterp.experiments.kaduri_common import run_shard
from vlminterp.experiments.kaduri_knockout import KnockoutSpec, group_knockouts
from vlminterp.io import write_table
from vlminterp.runtime import rule_context
from vlminterp.specs import build_spec

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    spec = build_spec(KnockoutSpec, params.spec, where="kaduri.knockout", max_new_tokens=params.max_new_tokens)
    write_table(run_shard(group_knockouts, spec, images=snakemake.input.images, shard=snakemake.wildcards.shard,
                          images_per_shard=params.images_per_shard, session=params.session,
                          vocabulary=params.vocabulary), snakemake.output[0])
