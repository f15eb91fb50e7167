"""vlminterp.across_runs: the headline quantities of several runs, read from hand-written summary
tables (the runs' real column names), against the hand-written numbers and hand-computed depths."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vlminterp.across_runs import UnknownRunError, across_runs, main

DEFAULT_RUN = Path(os.environ.get("VLMINTERP_DEFAULT_RUN", "/tmp/default-run/results/shapes-organism"))

N1 = pd.DataFrame({  # summarize_token_ablation's columns
    "setting": ["vqa", "vqa", "polling", "polling"],
    "condition": ["object_b1", "random_matched_b1", "object_b1", "random_matched_b1"],
    "mean": [0.8, 0.1, 0.6, 0.05], "low": [0.7, 0.05, 0.5, 0.0], "high": [0.9, 0.15, 0.7, 0.1],
    "n": [50, 50, 40, 40], "mean_tokens": [12, 12, 12, 12], "chance": [0.75, 0.75, None, None],
    "chance_answer": ["circle", "circle", "", ""]})
N3 = pd.DataFrame({  # summarize_attention_blocking's columns
    "window_kind": ["sliding"] * 4 + ["fixed"], "block_set": ["object_b1"] * 3 + ["non_object", "object_b1"],
    "window_start": [0, 1, 2, 1, None], "window": [None, None, None, None, "early"],
    "mean": [0.2, 0.5, 0.1, 0.9, 0.7], "low": [0.1, 0.4, 0.0, 0.8, 0.6], "high": [0.3, 0.6, 0.2, 1.0, 0.8],
    "n": [30] * 5})
K2_COLUMNS = ["condition", "family", "target", "layer_start", "layer_end", "mean", "low", "high", "recall",
              "precision", "n_images", "gt_f1", "chance_recall"]


def k2_table(last: int) -> pd.DataFrame:
    rows = [("none", "none", "", -1, -1, 1.0), ("image->query", "all_layers", "query", 0, last, 0.9),
            ("image->generated", "all_layers", "generated", 0, last, 0.3),
            ("image->query+generated", "all_layers", "query+generated", 0, last, 0.2),
            ("window 0-0 (generated)", "window", "generated", 0, 0, 0.4),
            ("window 2-2 (generated)", "window", "generated", 2, 2, 0.6),
            ("window 0-2 (generated)", "window", "generated", 0, 2, 0.95),
            ("window 2-2 (query)", "window", "query", 2, 2, 0.99),
            ("after 0", "from_layer", "query+generated", 1, last, 0.5),
            ("after 1", "from_layer", "query+generated", 2, last, 0.8)]
    return pd.DataFrame([(c, f, t, a, b, m, m - 0.05, m + 0.05, m, m, 20, m, 1 / 6) for c, f, t, a, b, m in rows],
                        columns=K2_COLUMNS)


K3 = pd.DataFrame({  # plot_localization's summary columns
    "band": [0, 1, 2, 3, 0], "layer_start": [0, 1, 2, 3, 0], "layer_end": [0, 1, 2, 3, 3],
    "accuracy": [0.5, 0.9, 0.6, 0.4, 0.95], "low": [0.4, 0.8, 0.5, 0.3, 0.9], "high": [0.6, 1.0, 0.7, 0.5, 1.0],
    "chance": [0.3] * 5, "n_mentions": [60] * 5, "n_excluded": [0] * 5, "n_images": [25] * 5,
    "grouping": ["layer"] * 4 + ["band of 8"]})


def make_run(root: Path, name: str, model: dict, tables: dict[str, pd.DataFrame], window: int = 2) -> Path:
    folder = root / name
    (folder / "config").mkdir(parents=True)
    config = {"run": name, "model": model, "neo": {"blocking": {"window": window}}}
    (folder / "config" / "effective_config.yaml").write_text(yaml.safe_dump(config))
    for path, table in tables.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(folder / path, index=False)
    return folder


@pytest.fixture
def runs(tmp_path):
    """organism (4 layers, every table), a pretrained 32-layer run (depth from K2), one without N3/K3."""
    organism = make_run(tmp_path, "org", {"kind": "organism", "organism": {"text_layers": 4}},
                        {"neo/ablation/summary.csv": N1, "neo/blocking/summary.csv": N3,
                         "kaduri/knockout/summary.csv": k2_table(3), "kaduri/localization/summary.csv": K3})
    big = make_run(tmp_path, "big", {"kind": "pretrained", "pretrained": {"id": "Qwen/Qwen2.5-VL-7B-Instruct"}},
                   {"neo/ablation/summary.csv": N1, "neo/blocking/summary.csv": N3,
                    "kaduri/knockout/summary.csv": k2_table(31)}, window=8)
    sweep = N1.assign(condition=["object_b1", "random_n10", "object_b1", "random_n20"])  # no matched random
    sweep = pd.concat([sweep, sweep.iloc[[1]].assign(condition="random_n20", mean=0.3)])
    partial = make_run(tmp_path, "partial", {"kind": "organism", "organism": {"text_layers": 2}},
                       {"neo/ablation/summary.csv": sweep})
    return [organism, big, partial]


def pick(table, run, quantity, condition=None):
    rows = table[(table["run"] == run) & (table["quantity"] == quantity)]
    if condition is not None:
        rows = rows[rows["condition"] == condition]
    assert len(rows) == 1, (run, quantity, condition, rows)
    return rows.iloc[0]


def test_values_and_depths_match_the_hand_written_tables(runs):
    table = across_runs(runs)
    n1 = pick(table, "org", "N1 object-token flip rate", "vqa object_b1")
    assert (n1["value"], n1["low"], n1["high"], n1["n"]) == (0.8, 0.7, 0.9, 50)
    assert (n1["control"], n1["control_value"], n1["chance"]) == ("random_matched_b1", 0.1, 0.75)
    assert pd.isna(pick(table, "org", "N1 object-token flip rate", "polling object_b1")["chance"])
    k2 = pick(table, "big", "K2 F1 vs unablated (all layers)", "image->generated")
    assert (k2["value"], k2["n"], k2["chance"], k2["n_layers"]) == (0.3, 20, pytest.approx(1 / 6), 32)
    # N3: largest object_b1 drop (non_object's 0.9 is another block set) at start 1, window 2 -> layers 1-2 of 4
    n3 = pick(table, "org", "N3 window with the largest drop")
    assert (n3["value"], n3["layer_start"], n3["layer_end"]) == (0.5, 1, 2)
    assert (n3["depth_start"], n3["depth_end"]) == (1 / 4, 3 / 4)
    # 32 layers, window 8: layers 1-8 -> 1/32 .. 9/32; the last start (2) is not truncated
    big = pick(table, "big", "N3 window with the largest drop")
    assert (big["depth_start"], big["depth_end"]) == (1 / 32, 9 / 32)
    window = pick(table, "org", "K2 best narrowest window (generated sees the image)")
    assert (window["condition"], window["value"], window["depth_start"], window["depth_end"]) == \
        ("window 2-2 (generated)", 0.6, 2 / 4, 3 / 4)
    start = table[(table["run"] == "big") & (table["quantity"] == "K2 F1 per first blocked layer")]
    assert list(start["depth_start"]) == [1 / 32, 2 / 32] and list(start["value"]) == [0.5, 0.8]
    k3 = pick(table, "org", "K3 best localization layer")
    assert (k3["value"], k3["chance"], k3["depth_start"], k3["depth_end"], k3["n"]) == (0.9, 0.3, 0.25, 0.5, 60)
    assert len(table[(table["run"] == "org") & (table["quantity"] == "K3 localization accuracy per layer")]) == 4


def test_missing_tables_are_notes_not_errors(runs):
    table = across_runs(runs)
    for quantity, path in (("N3 window with the largest drop", "neo/blocking/summary.csv"),
                           ("K3 best localization layer", "kaduri/localization/summary.csv"),
                           ("K2 F1 vs unablated (all layers)", "kaduri/knockout/summary.csv")):
        row = pick(table, "partial", quantity)
        assert pd.isna(row["value"]) and row["note"].startswith("absent") and path in row["note"]
    assert pick(table, "big", "K3 best localization layer")["note"].startswith("absent")
    # no random_matched_b1: the random_n* nearest the object's 12 tokens (vqa: n10 of n10/n20; polling: n20 only)
    vqa, polling = (pick(table, "partial", "N1 object-token flip rate", f"{s} object_b1") for s in ("vqa", "polling"))
    assert (vqa["control"], vqa["control_value"]) == ("random_n10", 0.1)
    assert (polling["control"], polling["control_value"]) == ("random_n20", 0.05)


def test_command_writes_the_table_and_figure(runs, tmp_path):
    out = tmp_path / "across"
    assert main([str(r) for r in runs] + ["--out", str(out)]) == 0
    written = pd.read_csv(out / "across_runs.csv")
    assert set(written["run"]) == {"org", "big", "partial"}
    for suffix in (".png", ".pdf"):
        assert (out / f"across_runs{suffix}").stat().st_size > 10_000


def test_an_unknown_results_folder_is_named(runs, tmp_path):
    with pytest.raises(UnknownRunError, match="nowhere"):
        across_runs([runs[0], tmp_path / "nowhere"])
    result = subprocess.run([sys.executable, "-m", "vlminterp.across_runs", str(runs[0]), str(tmp_path),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2 and str(tmp_path) in result.stderr and "effective_config.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_default_run(tmp_path):
    """The default organism's run (raw N1/N3 tables where it predates their summaries)."""
    if not (DEFAULT_RUN / "config" / "effective_config.yaml").is_file():
        pytest.skip(f"no default run at {DEFAULT_RUN} (VLMINTERP_DEFAULT_RUN points elsewhere)")
    table = across_runs([DEFAULT_RUN])
    k2 = pd.read_csv(DEFAULT_RUN / "kaduri" / "knockout" / "summary.csv").set_index("condition")
    got = pick(table, table["run"].iloc[0], "K2 F1 vs unablated (all layers)", "image->query")
    assert got["value"] == pytest.approx(k2.loc["image->query", "mean"])
    raw = pd.read_csv(DEFAULT_RUN / "neo" / "ablation" / "ablation.csv")
    flips = raw[raw["included"] & (raw["setting"] == "vqa") & (raw["condition"] == "object_b1")]["flipped"]
    assert pick(table, table["run"].iloc[0], "N1 object-token flip rate", "vqa object_b1")["value"] == \
        pytest.approx(flips.mean())
    n3 = pick(table, table["run"].iloc[0], "N3 window with the largest drop")
    assert 0 <= n3["depth_start"] < n3["depth_end"] <= 1


def test_copies_of_one_run_stay_apart(runs, tmp_path):
    copy = shutil.copytree(runs[2], tmp_path / "elsewhere" / "partial")
    table = across_runs([runs[2], copy, runs[2]])
    assert set(table["run"]) == {f"partial ({runs[2]})", f"partial ({copy})"}


def test_n3_rows_carry_the_non_object_control_of_their_window(tmp_path):
    """Control = the non_object set's drop in the same sliding window (hand-joined here), chance none
    (said in the note); a run without non_object, or a window without it, names that in `control`."""
    summary = pd.DataFrame({
        "window_kind": ["sliding"] * 6, "block_set": ["object_b1"] * 3 + ["non_object"] * 2 + ["object_b2"],
        "window_start": [0, 1, 2, 0, 1, 1], "window": [None] * 6, "mean": [0.3, 0.6, 0.2, 0.05, 0.1, 0.9],
        "low": [0.2, 0.5, 0.1, 0.0, 0.05, 0.8], "high": [0.4, 0.7, 0.3, 0.1, 0.15, 1.0], "n": [12] * 6})
    # the raw table of another run: per image x block set x window start, its drop (one excluded image)
    raw = pd.DataFrame([(image, block_set, "sliding", start, drop, image != 3)
                        for image, drops in ((1, (0.4, 0.2, 0.0)), (2, (0.6, 0.0, 0.2)), (3, (1.0, 1.0, 1.0)))
                        for block_set, drop in zip(("object_b1", "non_object", "object_b0"), drops)
                        for start in (0, 1)],
                       columns=["image_id", "block_set", "window_kind", "window_start", "drop", "included"])
    organism = {"kind": "organism", "organism": {"text_layers": 3}}
    runs = [make_run(tmp_path, "with", organism, {"neo/blocking/summary.csv": summary}),
            make_run(tmp_path, "without", organism,
                     {"neo/blocking/summary.csv": summary[summary["block_set"] != "non_object"]}),
            make_run(tmp_path, "raw", organism, {"neo/blocking/blocking.csv": raw})]
    table = across_runs(runs)
    n3 = table[table["experiment"] == "N3"]
    curve = n3[(n3["run"] == "with") & (n3["quantity"] == "N3 drop per window start")]
    objects, controls = (summary[summary["block_set"] == s].set_index("window_start")
                         for s in ("object_b1", "non_object"))
    expected = objects.merge(controls, how="left", left_index=True, right_index=True,  # start 2: no control
                             suffixes=("", "_control"))
    assert list(curve["layer_start"]) == [0, 1, 2] and list(curve["value"]) == pytest.approx(list(expected["mean"]))
    assert list(curve["control"]) == ["non_object", "non_object", "none: no non_object row for this window"]
    for got, want in (("control_value", "mean_control"), ("control_low", "low_control"),
                      ("control_high", "high_control")):
        assert curve[got].to_numpy(dtype=float) == pytest.approx(expected[want].to_numpy(), nan_ok=True)
    best = pick(table, "with", "N3 window with the largest drop")
    assert (best["layer_start"], best["value"], best["control"], best["control_value"]) == (1, 0.6, "non_object", 0.1)
    assert n3["note"].str.startswith("chance: none").all() and n3["chance"].isna().all()
    without = n3[n3["run"] == "without"]
    assert len(without) == 4 and without["control_value"].isna().all()
    assert (without["control"] == "none: the run blocked no non_object set (neo.blocking.block_sets)").all()
    # raw: included images 1 and 2 only, object_b0 before object_b1 in name order but b1 is chosen
    raw_best = pick(table, "raw", "N3 window with the largest drop")
    assert raw_best["condition"] == "object_b1" and raw_best["n"] == 2
    assert (raw_best["value"], raw_best["control"], raw_best["control_value"]) == \
        (pytest.approx((0.4 + 0.6) / 2), "non_object", pytest.approx((0.2 + 0.0) / 2))
