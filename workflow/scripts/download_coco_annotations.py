"""Rule download_coco_annotations: the COCO 2017 annotation archive, verified, JSONs extracted."""
from pathlib import Path

from vlminterp.data.download import CocoDownloadSpec, download_annotations
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]):
    spec = CocoDownloadSpec.from_config(snakemake.params.coco)
    download_annotations(spec, Path(snakemake.output.instances).parents[1])
