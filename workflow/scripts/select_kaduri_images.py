"""Rule select_kaduri_images: the seeded sample of annotated images every Kaduri et al. stage reads."""
from vlminterp.data.coco import CocoDataset
from vlminterp.experiments.kaduri.images import select_images
from vlminterp.io import write_table
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0], seed=snakemake.params.seed):
    dataset = CocoDataset.load(snakemake.params.dataset_dir, snakemake.params.split)
    write_table(select_images(dataset, snakemake.params.n_images, snakemake.params.seed), snakemake.output[0])
