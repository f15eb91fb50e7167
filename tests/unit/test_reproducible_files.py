"""Files whose bytes used to change from run to run for the same inputs: figures' PDFs (creation
date) and the mean embedding's safetensors (metadata in hash-map order). The whole DAG twice:
tests/workflow/test_other_world.py."""
from __future__ import annotations

import json
import struct
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vlminterp.experiments.neo.mean_embedding import load_mean_embedding, save_mean_embedding  # noqa: E402
from vlminterp.plots.organism import save_figure  # noqa: E402


def _figure():
    figure, axis = plt.subplots()
    axis.plot([0, 1, 2], [1, 0, 1])
    return figure


def test_same_figure_gives_the_same_pdf_bytes(tmp_path, monkeypatch):
    save_figure(_figure(), tmp_path / "a")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "")          # no help from the environment either
    save_figure(_figure(), tmp_path / "b")
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()
    assert b"CreationDate" not in (tmp_path / "a.pdf").read_bytes()


SAVE = """
import sys, torch
from vlminterp.experiments.neo.mean_embedding import save_mean_embedding
save_mean_embedding(torch.arange(8.0), 5, [3, 1, 2], sys.argv[1], batching={"batch_size": 4, "oom_retries": 0})
"""


def test_mean_embedding_bytes_do_not_depend_on_the_process(tmp_path):
    """Each process seeds its hash maps differently (5 keys: 120 orders): write from two, compare."""
    paths = [tmp_path / f"mean{i}.safetensors" for i in range(2)]
    for path in paths:
        subprocess.run([sys.executable, "-c", SAVE, str(path)], check=True)
    assert len({p.read_bytes() for p in paths}) == 1
    raw = paths[0].read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert torch.equal(load_mean_embedding(paths[0]), torch.arange(8.0))
    save_mean_embedding(torch.ones(3), 1, [1], tmp_path / "one.safetensors")
    assert torch.equal(load_mean_embedding(tmp_path / "one.safetensors"), torch.ones(3))
