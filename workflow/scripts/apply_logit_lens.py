"""Rule apply_logit_lens: N2 on one shard of the targets (top-k table and per-region scores)."""
from vlminterp.experiments.neo_common import load_stage_inputs
from vlminterp.experiments.neo_logit_lens import LensSpec, run_logit_lens
from vlminterp.io import write_table
from vlminterp.runtime import rule_context
from vlminterp.specs import build_spec

with rule_context(snakemake.log[0], threads=snakemake.threads, seed=snakemake.params.seed):
    inputs = load_stage_inputs(snakemake.input, snakemake.params, snakemake.wildcards.shard)
    lens = {k: v for k, v in snakemake.params.lens.items() if k != "html_images"}
    topk, scores = run_logit_lens(*inputs.model_parts, inputs.dataset, inputs.selection, inputs.cells,
                                  prompts=inputs.prompts, vocabulary=inputs.vocabulary,
                                  spec=build_spec(LensSpec, lens, where="neo.logit_lens"),
                                  cell_spec=inputs.cell_spec)
    write_table(topk, snakemake.output.topk)
    write_table(scores, snakemake.output.scores)
