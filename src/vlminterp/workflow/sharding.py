"""Split per-image work into shards (one job each) and gather them back into one table.

    n = num_shards(n_images=200, images_per_shard=50)          # 4 shards: "000" .. "003"
    part = shard_rows(selection, shard="002", images_per_shard=50)   # rows 100..149
    table = gather_shards(["shards/000.csv", "shards/001.csv"])      # concatenated in shard order

Shards are contiguous row ranges of a selection table, so the gathered table has exactly the rows,
in exactly the order, of an unsharded run (each image's computation never depends on the others).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import pandas as pd

from vlminterp.io import read_table

SHARD_WIDTH = 3


def num_shards(n_images: int, images_per_shard: int) -> int:
    """Number of shards that cover `n_images` (at least one, so every stage has a job)."""
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    return max(1, math.ceil(n_images / images_per_shard))


def shard_names(n_images: int, images_per_shard: int) -> list[str]:
    """Zero-padded shard ids ("000", "001", ...) used as the `{shard}` wildcard."""
    return [f"{i:0{SHARD_WIDTH}d}" for i in range(num_shards(n_images, images_per_shard))]


def shard_rows(table: pd.DataFrame, shard: str | int, images_per_shard: int) -> pd.DataFrame:
    """The contiguous block of rows of `table` that shard `shard` processes (may be empty)."""
    index = int(shard)
    if index < 0:
        raise ValueError(f"shard must be >= 0, got {shard!r}")
    start = index * images_per_shard
    return table.iloc[start:start + images_per_shard].reset_index(drop=True)


def gather_shards(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate shard tables in the given order (empty shards contribute no rows)."""
    frames = [read_table(p) for p in paths]
    non_empty = [f for f in frames if len(f)]
    if not non_empty:
        return frames[0] if frames else pd.DataFrame()
    return pd.concat(non_empty, ignore_index=True)
