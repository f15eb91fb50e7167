"""Rule map_object_cells: each target's mask on the model's image-token grid (overlap, buffers)."""
from vlminterp.data.coco import CocoDataset
from vlminterp.experiments.neo_common import CellSpec, load_adapter_geometry
from vlminterp.geometry import map_object_cells
from vlminterp.io import read_table, write_table
from vlminterp.models.loading import ModelSpec
from vlminterp.runtime import rule_context
from vlminterp.specs import build_spec

with rule_context(snakemake.log[0]):
    spec = build_spec(CellSpec, snakemake.params.cells, where="neo.cells")
    adapter = load_adapter_geometry(ModelSpec(**snakemake.params.model))
    dataset = CocoDataset.load(snakemake.params.dataset_dir, snakemake.params.split)
    write_table(map_object_cells(dataset, read_table(snakemake.input.selection), adapter, spec), snakemake.output[0])
