"""Smoke test: the benchmark scripts run end to end on a tiny model and report equality.
(No timing assertions: speed lives in benchmarks/results/*.json.)"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def test_knockout_benchmark_runs_and_checks_equality(tmp_path):
    from benchmarks import knockout_last_token

    out = tmp_path / "k.json"
    knockout_last_token.main(["--model", "tiny-gqa", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["conditions"] == 36
    assert result["equality"]["passed"] and result["equality"]["same_top1_all_conditions"]


def test_generation_benchmark_runs_and_checks_equality(tmp_path):
    from benchmarks import generation_batched

    out = tmp_path / "g.json"
    generation_batched.main(["--model", "tiny-llama", "--repeats", "1", "--new-tokens", "4", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["conditions"] == 16 and result["equality"]["identical_generations"]


@pytest.mark.parametrize("layers,expected_all", [(32, list(range(32))), (8, list(range(8))), (4, list(range(4)))])
def test_layer_windows_scale_with_depth(layers, expected_all):
    from benchmarks.knockout_last_token import scaled_windows

    windows = scaled_windows(layers)
    assert windows["all"] == expected_all
    if layers == 32:
        assert windows["early"] == list(range(0, 10)) and windows["mid"] == list(range(11, 21))
    assert all(len(w) >= 1 for w in windows.values())
