"""Shared pytest set-up: every test starts from the same seeds and runs on the CPU.

Markers (see pyproject.toml): slow, workflow, gpu, slurm, browser. GPU tests skip without CUDA.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed Python, NumPy and torch before each test so results never depend on test order."""
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="no CUDA device on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A working directory in which the whole default DAG has run once on tests/configs/tiny.yaml
    (shared by the workflow, DVC and SLURM tests)."""
    from snakemake_runner import snakemake

    workdir = tmp_path_factory.mktemp("tiny_run")
    snakemake(workdir, "--cores", "2")
    return workdir
