"""Atomic writes leave either the complete new file or the old one, never a partial file."""
import os
import stat

import pandas as pd
import pytest

from vlminterp.io import atomic_path, read_table, write_json, write_table


def test_failed_write_leaves_no_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a table")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.json"
    write_json({"a": 1}, target)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt
    assert target.read_text().strip().startswith("{\n")


def test_directory_output_replaced_as_a_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_outputs_get_ordinary_permissions(tmp_path):
    target = tmp_path / "t.csv"
    write_table(pd.DataFrame({"x": [1, 2]}), target)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert read_table(target)["x"].tolist() == [1, 2]


def test_gzipped_table_is_byte_identical_on_rewrite(tmp_path):
    table = pd.DataFrame({"token": ["a", "<b>"], "prob": [0.5, 0.25]})
    first, second = tmp_path / "one" / "t.csv.gz", tmp_path / "two" / "t.csv.gz"
    write_table(table, first)
    write_table(table, second)
    assert first.read_bytes() == second.read_bytes()
    pd.testing.assert_frame_equal(read_table(first), table)


def test_token_texts_that_look_missing_stay_text(tmp_path):
    """Real LLaVA vocabulary tokens such as "null", "NA", "nan" and "None" are not missing values;
    an empty field still is."""
    import numpy as np
    import pandas as pd

    from vlminterp.io import read_table, write_table

    table = pd.DataFrame({"token": ["null", "NA", "nan", "None", "N/A", "x"], "prob": [0.1, np.nan, 0.2, 0.3, 0.4, 0.5]})
    for name in ("t.csv", "t.csv.gz"):
        write_table(table, tmp_path / name)
        back = read_table(tmp_path / name)
        assert back["token"].tolist() == ["null", "NA", "nan", "None", "N/A", "x"]
        assert back["prob"].isna().tolist() == [False, True, False, False, False, False]
