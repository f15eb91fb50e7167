"""Rule localize_objects (K3): attention peaks of generated object words, one shard of images."""
from vlminterp.experiments.kaduri_common import run_shard
from vlminterp.experiments.kaduri_localization import LocalizationSpec, localization
from vlminterp.io import write_table
from vlminterp.runtime import rule_context
from vlminterp.specs import build_spec

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    spec = build_spec(LocalizationSpec, params.spec, where="kaduri.localization", max_new_tokens=params.max_new_tokens)
    write_table(run_shard(localization, spec, images=snakemake.input.images, shard=snakemake.wildcards.shard,
                          images_per_shard=params.images_per_shard, session=params.session,
                          vocabulary=params.vocabulary), snakemake.output[0])
