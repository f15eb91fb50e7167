"""Rule measure_attention_fractions (K1): attention shares of the generated tokens, one shard of images."""
from vlminterp.experiments.kaduri_attention import AttentionFractionSpec, attention_fractions
from vlminterp.experiments.kaduri_common import run_shard
from vlminterp.io import write_table
from vlminterp.runtime import rule_context
from vlminterp.specs import build_spec

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    spec = build_spec(AttentionFractionSpec, params.spec, where="kaduri.attention",
                      max_new_tokens=params.max_new_tokens)
    write_table(run_shard(attention_fractions, spec, images=snakemake.input.images, shard=snakemake.wildcards.shard,
                          images_per_shard=params.images_per_shard, session=params.session), snakemake.output[0])
