"""Rule download_coco_annotations: the COCO 2017 annotation archive, verified, JSONs extracted."""
from pathlib import Path

from vlminterp.data.download import CocoDownloadSpec, download_annotations
from vlminterp.runtime import rule_context

with rule_context(snakemake.log[0]):
    coco = snakemake.params.coco
    spec = CocoDownloadSpec(annotations_base_url=coco["annotations_base_url"],
                            images_base_url=coco["images_base_url"], retries=coco["retries"])
    download_annotations(spec, Path(snakemake.output.instances).parents[1])
