"""Fetch a pinned hub model into the Hugging Face cache before any model job (rule fetch_model).

`snapshot_download` resumes an interrupted download (its `.incomplete` files) and shows progress
bars (the rule's log); afterwards every file the hub lists for that revision is checked here: its
size, and the SHA-256 the hub records for its large (LFS) files, and the directory must hold what
`load_model` needs (`missing_model_files`). The manifest written names the id, the revision asked
for, the commit it resolved to, the snapshot directory and every file checked.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from vlminterp.io import atomic_path
from vlminterp.models.loading import WeightsNotAvailableError, missing_model_files

log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_model(repo_id: str, revision: str | None, manifest: str | Path,
                cache_dir: str | Path | None = None) -> dict:
    """Download (or find in the cache) `repo_id` at `revision`, verify it, write `manifest`."""
    from huggingface_hub import HfApi, snapshot_download

    where = f"{repo_id} @ {revision or 'main'}"
    log.info("fetching %s into the Hugging Face cache (resumes a partial download)", where)
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        snapshot = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir))
    except Exception as error:          # the hub's many error types, stated with the model
        raise WeightsNotAvailableError(f"could not fetch {where}: {type(error).__name__}: {error}") from None
    files = []
    for sibling in info.siblings or []:
        path = snapshot / sibling.rfilename
        if not path.is_file():
            raise WeightsNotAvailableError(f"{where}: {sibling.rfilename} is missing after the download")
        size = path.stat().st_size
        expected_size = sibling.lfs.size if sibling.lfs else sibling.size
        if expected_size is not None and size != expected_size:
            raise WeightsNotAvailableError(f"{where}: {sibling.rfilename} has {size} bytes, the hub "
                                           f"lists {expected_size}: delete it from {snapshot} and rerun")
        entry = {"file": sibling.rfilename, "size": size}
        if sibling.lfs:
            digest = _sha256(path)
            if digest != sibling.lfs.sha256:
                raise WeightsNotAvailableError(f"{where}: {sibling.rfilename} has SHA-256 {digest}, the hub "
                                               f"lists {sibling.lfs.sha256}: delete it from {snapshot} and rerun")
            entry["sha256"] = digest
        files.append(entry)
        log.info("verified %s (%d bytes%s)", sibling.rfilename, size, ", SHA-256" if sibling.lfs else "")
    missing = missing_model_files(snapshot)
    if missing:
        raise WeightsNotAvailableError(f"{where} lacks " + "; ".join(missing))
    record = {"id": repo_id, "revision": revision, "commit": info.sha, "snapshot": str(snapshot),
              "files": files}
    with atomic_path(manifest) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
    log.info("%s is in the cache at %s (%d files verified)", where, snapshot, len(files))
    return record
