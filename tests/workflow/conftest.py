"""Fixtures for the workflow tests: the whole DAG run once on the tiny config."""
from __future__ import annotations

from pathlib import Path

import pytest

from snakemake_runner import snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A working directory in which the whole default DAG has run once on the tiny config."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    snakemake(workdir, "--cores", "2")
    return workdir
