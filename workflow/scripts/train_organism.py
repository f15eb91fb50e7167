"""Rule train_organism: train the tiny LLaVA model organism on the shapes world."""
from pathlib import Path

from vlminterp.organism import OrganismSpec, train_organism
from vlminterp.workflow.runtime import rule_context
from vlminterp.specs import build_spec

with rule_context(snakemake.log[0], threads=snakemake.threads, seed=snakemake.params.seed):
    spec = build_spec(OrganismSpec, snakemake.params.spec, where="model.organism",
                      seed=snakemake.params.seed, num_threads=snakemake.threads)
    model_dir = Path(snakemake.output.model)
    # Outside the output (Snakemake deletes that before a rerun), hidden from `make push`.
    checkpoint_dir = model_dir.with_name(f".{model_dir.name}.checkpoint")
    train_organism(spec, snakemake.input.world, model_dir, checkpoint_dir=checkpoint_dir)  # + losses.csv
