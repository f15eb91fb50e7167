"""Shards cover the selection exactly once, in order; gathering restores the unsharded table."""
import pandas as pd
import pytest

from vlminterp.io import write_table
from vlminterp.workflow.sharding import gather_shards, num_shards, shard_names, shard_rows


@pytest.mark.parametrize("n, per, expected", [(0, 5, 1), (1, 5, 1), (5, 5, 1), (6, 5, 2), (11, 5, 3)])
def test_num_shards(n, per, expected):
    assert num_shards(n, per) == expected
    assert len(shard_names(n, per)) == expected


def test_shards_partition_rows_and_gather_restores_order(tmp_path):
    table = pd.DataFrame({"image_id": range(11), "x": [i * 0.5 for i in range(11)]})
    paths = []
    for name in shard_names(len(table), 4):
        path = tmp_path / f"{name}.csv"
        write_table(shard_rows(table, name, 4), path)
        paths.append(path)
    pd.testing.assert_frame_equal(gather_shards(paths), table)


def test_shard_past_the_end_is_empty_and_bad_values_raise():
    table = pd.DataFrame({"image_id": range(3)})
    assert shard_rows(table, "005", 2).empty
    with pytest.raises(ValueError):
        num_shards(3, 0)
    with pytest.raises(ValueError):
        shard_rows(table, -1, 2)
