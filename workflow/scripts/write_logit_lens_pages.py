"""Rule write_logit_lens_pages: one self-contained interactive logit-lens page per image + an index."""
from vlminterp.data.coco import CocoDataset
from vlminterp.experiments.neo.logit_lens import write_lens_pages
from vlminterp.experiments.shared.cells import cells_by_image
from vlminterp.io import atomic_path, read_table
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]):
    selection = read_table(snakemake.input.selection)
    dataset = CocoDataset.load(snakemake.params.dataset_dir, snakemake.params.split)
    with atomic_path(snakemake.output[0], is_dir=True) as tmp:
        write_lens_pages(read_table(snakemake.input.topk), selection, cells_by_image(read_table(snakemake.input.cells)),
                         dataset, tmp, snakemake.params.max_pages,
                         scores=read_table(snakemake.input.scores))
