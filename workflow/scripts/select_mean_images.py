"""Rule select_mean_images: the images whose embeddings N1's mean ablation vector averages
(seeded; never the evaluation images when both come from the same split)."""
import pandas as pd

from vlminterp.data.coco import CocoDataset
from vlminterp.experiments.neo.mean_embedding import mean_image_ids
from vlminterp.io import read_table, write_table
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0], seed=snakemake.params.seed):
    params = snakemake.params
    dataset = CocoDataset.load(params.dataset_dir, params.mean["split"])
    selection = read_table(snakemake.input.selection)
    exclude = selection["image_id"] if params.mean["split"] == params.selection_split else []
    image_ids = mean_image_ids(dataset, params.mean["max_images"], params.seed, exclude=exclude)
    files = [dataset.image_info(i)["file_name"] for i in image_ids]
    write_table(pd.DataFrame({"image_id": image_ids, "file_name": files}), snakemake.output[0])
