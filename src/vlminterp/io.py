"""Atomic file output and tidy-table I/O shared by every stage.

    with atomic_path("results/x/table.csv") as tmp:   # write to tmp, renamed on success
        df.to_csv(tmp, index=False)
    write_table(df, "results/x/table.csv")            # same, csv or parquet by suffix
    write_json({"a": 1}, "results/x/summary.json")
    write_yaml(config, "results/x/config/effective_config.yaml")
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


def _default_mode(base: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


_FILE_MODE = _default_mode(0o666)
_DIR_MODE = _default_mode(0o777)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; move it onto `path` only if the block succeeds.

    An interrupted or failing writer never leaves a partial file under the final name.
    With `is_dir=True` the temporary is a directory that replaces `path` as a whole.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=final.parent, suffix=final.suffix)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(_DIR_MODE if is_dir else _FILE_MODE)  # mkstemp/mkdtemp make private files
        if is_dir:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a long-format table atomically (.csv, .csv.gz or .parquet by suffix).

    Gzipped tables carry no timestamp or file name, so the same table is the same bytes."""
    with atomic_path(path) as tmp:
        suffix = Path(path).suffix
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif suffix == ".gz":
            tmp.write_bytes(gzip.compress(df.to_csv(index=False).encode(), mtime=0))
        else:
            df.to_csv(tmp, index=False)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by `write_table`. Only an empty CSV field is missing: text such as a
    token "null", "NA" or "nan" (all in LLaVA's vocabulary) stays text."""
    if Path(path).suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically, with sorted keys so reruns are byte-identical."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_yaml(obj: Any, path: str | os.PathLike) -> None:
    """Write YAML atomically, keys in the order given (a config reads as its schema is written)."""
    import yaml

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=100))


def write_effective_config(config: dict, sources: list[str], path: str | os.PathLike, log: str | os.PathLike) -> None:
    """Write a run's effective config (`config_files` = where it came from, then every value) and a
    one-line log; sources are shown relative when inside the working directory, else absolute."""
    def shown(source: str) -> str:
        if source == "--config":
            return source
        relative = os.path.relpath(source)
        return os.path.abspath(source) if relative.startswith("..") else relative

    shown_sources = [shown(source) for source in sources]
    write_yaml({"config_files": shown_sources, **dict(config)}, path)
    Path(log).write_text(f"{path}: the config of {', '.join(shown_sources)} with the schema's defaults\n")
