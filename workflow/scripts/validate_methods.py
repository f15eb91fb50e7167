"""Rule validate_methods: each method's measured value beside the planted truth (method_validation.csv)."""
from vlminterp.experiments.method_validation import Planted, ValidationTables, method_validation
from vlminterp.io import read_table, write_table
from vlminterp.workflow.runtime import rule_context

params, inputs = snakemake.params, snakemake.input
with rule_context(snakemake.log[0], seed=params.seed):
    tables = ValidationTables(ablation=read_table(inputs.ablation), blocking=read_table(inputs.blocking),
                              knockout=read_table(inputs.knockout), localization=read_table(inputs.localization),
                              reprompt=read_table(inputs.reprompt),
                              descriptions=read_table(inputs.descriptions))
    planted = Planted(params.routing["routing"], tuple(params.routing["band"]), int(params.routing["n_layers"]))
    write_table(method_validation(tables, planted, seed=params.seed), snakemake.output[0])
