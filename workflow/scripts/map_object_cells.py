"""Rule map_object_cells: each target's mask on the model's image-token grid (overlap, buffers)."""
from vlminterp.experiments import stages
from vlminterp.io import write_table
from vlminterp.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0]):
    table = stages.object_cells(model=params.model, dataset_dir=params.dataset_dir, split=params.split,
                                cells=params.cells, selection=snakemake.input.selection)
    write_table(table, snakemake.output[0])
