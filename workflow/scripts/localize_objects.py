"""Rule localize_objects (K3): attention peaks of generated object words, one shard of images."""
from vlminterp.experiments.kaduri_common import dataset_vocabulary, load_images_table, open_session
from vlminterp.experiments.kaduri_localization import LocalizationSpec, localization
from vlminterp.io import write_table
from vlminterp.runtime import rule_context
from vlminterp.sharding import shard_rows
from vlminterp.specs import build_spec

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    spec = build_spec(LocalizationSpec, params.spec, where="kaduri.localization", max_new_tokens=params.max_new_tokens)
    images = shard_rows(load_images_table(snakemake.input.images), snakemake.wildcards.shard, params.images_per_shard)
    session = open_session(**params.session)
    vocabulary = dataset_vocabulary(params.vocabulary, session.dataset)
    write_table(localization(session, images, spec, vocabulary), snakemake.output[0])
