"""Rule block_object_attention: N3 on one shard of the targets (one row per image x block set x window)."""
from vlminterp.experiments.neo_blocking import BlockingSpec, run_attention_blocking
from vlminterp.experiments.neo_common import load_stage_inputs
from vlminterp.io import write_table
from vlminterp.runtime import rule_context
from vlminterp.specs import build_spec

with rule_context(snakemake.log[0], threads=snakemake.threads, seed=snakemake.params.seed):
    inputs = load_stage_inputs(snakemake.input, snakemake.params, snakemake.wildcards.shard)
    section = dict(snakemake.params.blocking)
    section["fixed_windows"] = [(w["name"], w["start"], w["end"]) for w in section["fixed_windows"]]
    spec = build_spec(BlockingSpec, section, where="neo.blocking")
    table = run_attention_blocking(*inputs.model_parts, inputs.dataset, inputs.selection, inputs.cells,
                                   prompts=inputs.prompts, spec=spec, cell_spec=inputs.cell_spec)
    write_table(table, snakemake.output[0])
