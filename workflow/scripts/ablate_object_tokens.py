"""Rule ablate_object_tokens: N1 on one shard of the targets (one row per image x setting x condition)."""
from vlminterp.experiments.neo_ablation import AblationSpec, run_token_ablation
from vlminterp.experiments.neo_common import load_mean_embedding, load_stage_inputs
from vlminterp.io import write_table
from vlminterp.runtime import rule_context
from vlminterp.specs import build_spec

with rule_context(snakemake.log[0], threads=snakemake.threads, seed=snakemake.params.seed):
    inputs = load_stage_inputs(snakemake.input, snakemake.params, snakemake.wildcards.shard)
    spec = build_spec(AblationSpec, snakemake.params.ablation, where="neo.ablation", seed=snakemake.params.seed)
    table = run_token_ablation(*inputs.model_parts, inputs.dataset, inputs.selection, inputs.cells,
                               load_mean_embedding(snakemake.input.mean), prompts=inputs.prompts,
                               vocabulary=inputs.vocabulary, spec=spec, cell_spec=inputs.cell_spec)
    write_table(table, snakemake.output[0])
