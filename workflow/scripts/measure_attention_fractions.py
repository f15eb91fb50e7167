"""Rule measure_attention_fractions (K1): attention shares of the generated tokens, one shard of images."""
from vlminterp.experiments.kaduri_attention import AttentionFractionSpec, attention_fractions
from vlminterp.experiments.kaduri_common import load_images_table, open_session
from vlminterp.io import write_table
from vlminterp.runtime import rule_context
from vlminterp.sharding import shard_rows
from vlminterp.specs import build_spec

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    spec = build_spec(AttentionFractionSpec, params.spec, where="kaduri.attention",
                      max_new_tokens=params.max_new_tokens)
    images = shard_rows(load_images_table(snakemake.input.images), snakemake.wildcards.shard, params.images_per_shard)
    session = open_session(**params.session)
    write_table(attention_fractions(session, images, spec), snakemake.output[0])
