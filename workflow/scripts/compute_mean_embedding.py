"""Rule compute_mean_embedding: streaming mean of the post-projector image embedding (N1's ablation vector)."""
from vlminterp.workflow import stages
from vlminterp.workflow.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    stages.mean_embedding(session=params.session, mean=params.mean, images=snakemake.input.images,
                          output=snakemake.output[0])
