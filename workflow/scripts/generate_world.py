"""Rule generate_world: write the synthetic COCO-format shapes world."""
from vlminterp.data.shapes import ShapesWorldSpec, generate_world
from vlminterp.workflow.runtime import rule_context
from vlminterp.specs import build_spec

with rule_context(snakemake.log[0], seed=snakemake.params.seed):
    spec = build_spec(ShapesWorldSpec, snakemake.params.spec, where="dataset.shapes",
                      seed=snakemake.params.seed)
    generate_world(spec, snakemake.output[0])
