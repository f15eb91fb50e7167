"""Fixtures for the workflow tests (the shared `tiny_run` lives in tests/conftest.py)."""
from __future__ import annotations

import pytest

from rehearsal import copy_checkout


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of this checkout's files (config.yaml included), to run snakemake from its root."""
    return copy_checkout(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    """A saved tiny LLaVA: a local model directory the early model checks accept."""
    from vlminterp.testing.synthetic import build_synthetic, save_synthetic

    directory = tmp_path_factory.mktemp("model")
    save_synthetic(*build_synthetic("tiny-llama"), directory)
    return directory
