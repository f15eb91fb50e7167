"""Every rule that runs a library stage: the `workflow.stages` function its registry entry names
(`vlminterp.workflow.registry.run_rule`), called with the rule's params, named inputs and
wildcards; the table(s) it returns written to the rule's outputs, in order. Torch is set up (threads,
seed) only for a stage that loads the model: a summary imports neither torch nor transformers."""
from vlminterp.workflow.registry import by_rule, run_rule
from vlminterp.io import write_table
from vlminterp.workflow.runtime import rule_context

params = dict(snakemake.params.items())
threads = snakemake.threads if by_rule(snakemake.rule).model else None
with rule_context(snakemake.log[0], threads=threads, seed=params.get("seed")):
    tables = run_rule(snakemake.rule, params=params, inputs=dict(snakemake.input.items()),
                      wildcards=dict(snakemake.wildcards.items()))
    if len(tables) != len(snakemake.output):
        raise ValueError(f"rule {snakemake.rule}: its stage returned {len(tables)} tables for "
                         f"{len(snakemake.output)} outputs")
    for table, path in zip(tables, snakemake.output):
        write_table(table, path)
