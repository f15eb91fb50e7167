"""Rule evaluate_organism: greedy answers of the organism on held-out images, per task."""
from vlminterp.io import write_table
from vlminterp.organism import evaluate_organism, summarize_evaluation
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0], threads=snakemake.threads, seed=snakemake.params.seed):
    table = evaluate_organism(snakemake.input.model, snakemake.input.world,
                              split=snakemake.params.split,
                              max_images=snakemake.params.max_images,
                              batch_size=snakemake.params.batch_size)
    write_table(table, snakemake.output.table)
    write_table(summarize_evaluation(table), snakemake.output.summary)
