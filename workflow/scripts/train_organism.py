"""Rule train_organism: train the tiny LLaVA model organism on the shapes world."""
from vlminterp.models.organism import OrganismSpec, train_organism
from vlminterp.runtime import rule_context
from vlminterp.specs import build_spec

with rule_context(snakemake.log[0], threads=snakemake.threads, seed=snakemake.params.seed):
    spec = build_spec(OrganismSpec, snakemake.params.spec, where="model.organism",
                      seed=snakemake.params.seed, num_threads=snakemake.threads)
    train_organism(spec, snakemake.input.world, snakemake.output.model)  # also writes losses.csv
