"""Atomic file output and tidy-table I/O shared by every stage.

    with atomic_path("results/x/table.csv") as tmp:   # write to tmp, renamed on success
        df.to_csv(tmp, index=False)
    write_table(df, "results/x/table.csv")            # same, csv or parquet by suffix
    write_json({"a": 1}, "results/x/summary.json")
    write_yaml(config, "results/x/config/effective_config.yaml")
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io
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


def _csv_text(df: pd.DataFrame) -> str:
    """The CSV text of `df`, every cell recoverable by `read_table`. Fields holding a delimiter,
    quote or newline are quoted (the csv module's minimal rule); a carriage return is no line end
    to that rule (its line terminator is "\n") but is one to every reader, so a table with a "\r" in
    any text cell (Llama 2 has tokens such as ');\r') quotes every field instead."""
    text_columns = [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]
    has_cr = any(df[c].map(lambda v: isinstance(v, str) and "\r" in v).any() for c in text_columns)
    has_cr = has_cr or any(isinstance(c, str) and "\r" in c for c in df.columns)
    return df.to_csv(index=False, lineterminator="\n", quoting=csv.QUOTE_ALL if has_cr else csv.QUOTE_MINIMAL)


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a long-format table atomically (.csv, .csv.gz or .parquet by suffix).

    Gzipped tables carry no timestamp or file name, so the same table is the same bytes. Every text
    cell, whatever characters it holds (carriage returns, newlines, quotes, commas), reads back
    exactly with `read_table`."""
    with atomic_path(path) as tmp:
        suffix = Path(path).suffix
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif suffix == ".gz":
            tmp.write_bytes(gzip.compress(_csv_text(df).encode(), mtime=0))
        else:
            tmp.write_bytes(_csv_text(df).encode())


class MalformedTableError(ValueError):
    """A CSV table with a row whose field count differs from its header's."""


def _check_rows(raw: bytes, path: str | os.PathLike) -> None:
    """Fail naming the file and line of the first record whose field count is not the header's
    (a text cell with an unquoted line break, a truncated write), instead of padding it with NaN."""
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", newline=""))
    header = next(reader, None)
    if header is None:
        return
    for record in reader:
        if len(record) != len(header):
            raise MalformedTableError(
                f"{path}: line {reader.line_num}: {len(record)} field(s) where the header has {len(header)} "
                f"({record[:3]!r}...); the table is malformed (a text cell with an unquoted line break?)")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by `write_table`. Only an empty CSV field is missing: text such as a
    token "null", "NA" or "nan" (all in LLaVA's vocabulary) stays text. A CSV row with more or fewer
    fields than the header raises `MalformedTableError` naming the file and line."""
    if Path(path).suffix == ".parquet":
        return pd.read_parquet(path)
    raw = Path(path).read_bytes()
    if Path(path).suffix == ".gz":
        raw = gzip.decompress(raw)
    _check_rows(raw, path)
    if not raw.strip():
        raise pd.errors.EmptyDataError(f"{path}: no columns to parse")
    return pd.read_csv(io.BytesIO(raw), keep_default_na=False, na_values=[""])


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
