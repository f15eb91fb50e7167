"""Rule select_neo_targets: the images and target objects of N1-N3 (Neo et al.'s selection rules)."""
from vlminterp.data.coco import CocoDataset, SelectionSpec, select_targets
from vlminterp.io import write_table
from vlminterp.runtime import rule_context
from vlminterp.specs import build_spec

with rule_context(snakemake.log[0], seed=snakemake.params.seed):
    spec = build_spec(SelectionSpec, snakemake.params.selection, where="neo.selection", seed=snakemake.params.seed)
    dataset = CocoDataset.load(snakemake.params.dataset_dir, spec.split)
    write_table(select_targets(dataset, spec), snakemake.output[0])
