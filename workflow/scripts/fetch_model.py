"""Rule fetch_model: the pinned hub revision into the Hugging Face cache, verified (manifest.json)."""
from vlminterp.models.fetch import fetch_model
from vlminterp.workflow.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0]):
    fetch_model(params.id, params.revision, snakemake.output[0])
