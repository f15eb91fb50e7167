"""Rule download_authors_file: one of Neo et al.'s released data files, fetched at the pinned commit and verified."""
from pathlib import Path

from vlminterp.data.authors_data import download_authors_file
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]) as log:
    output = Path(snakemake.output[0])
    path = download_authors_file(output.name, output.parent, base_url=snakemake.params.base_url,
                                 retries=snakemake.params.retries)
    log.info("%s: %d bytes, size and SHA-256 as recorded", path, path.stat().st_size)
