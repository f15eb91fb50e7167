"""Rule download_coco_images: exactly the images the stages' selections need, each verified."""
from pathlib import Path

import pandas as pd

from vlminterp.data.download import CocoDownloadSpec, download_images
from vlminterp.io import read_table, write_table
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]):
    spec = CocoDownloadSpec.from_config(snakemake.params.coco)
    split = snakemake.wildcards.split.removesuffix(spec.year)
    image_ids = sorted({int(i) for table in snakemake.input.selections
                        for i in read_table(table)["image_id"]})
    root = Path(snakemake.output.manifest).parents[1]
    report = download_images(spec, {split: image_ids}, root)
    write_table(pd.DataFrame(report.rows), snakemake.output.manifest)
