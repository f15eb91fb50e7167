"""Rule apply_logit_lens: N2 on one shard of the targets (top-k table and per-region scores)."""
from vlminterp.experiments import stages
from vlminterp.io import write_table
from vlminterp.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    topk, scores = stages.logit_lens(session=params.session, spec=params.lens, prompts=params.prompts,
                                     selection=snakemake.input.selection, cells=snakemake.input.cells,
                                     shard=snakemake.wildcards.shard, images_per_shard=params.images_per_shard,
                                     questions=snakemake.input.get("questions"), seed=params.seed)
    write_table(topk, snakemake.output.topk)
    write_table(scores, snakemake.output.scores)
