"""Shared pytest set-up: every test starts from the same seeds and runs on the CPU.

Markers (see pyproject.toml): slow, workflow, gpu, slurm, browser. GPU tests skip without CUDA.

`make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`). The tests that use the
session's tiny run or its SLURM cluster form one group on one worker: they share one DAG run and one
cluster, and several of them run Snakemake inside the tiny run's directory, so they must not
overlap. Idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE, inherited by every Snakemake job):
with the default spinning policy two torch processes on two cores slow each other 20-40x.
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # read when torch loads: set before any import

# `import dvc` binds DVC's log handlers to the sys.stdout/stderr of that moment: imported here, they
# get pytest's session-long streams, not the `capsys` stream of whichever test imports it first
# (closed after that test, it made every later DVC call in the worker fail "I/O operation on closed file").
import dvc  # noqa: E402,F401

# Fixtures whose tests must share one worker (see the module docstring).
SHARED_WORKER_FIXTURES = {"tiny_run", "slurm_cluster", "organism_tables"}  # the last reads tiny_run by name


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed Python, NumPy and torch before each test so results never depend on test order."""
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.hookimpl(tryfirst=True)   # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Skip GPU tests without CUDA; group and order the tests for `make test`'s two workers."""
    import torch

    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="no CUDA device on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
    if getattr(config.option, "loadgroup", False):   # an xdist worker of `make test`
        _group_for_workers(items)


def _group_for_workers(items) -> None:
    """One xdist group per test module (its module fixtures are built once), except the tests of
    SHARED_WORKER_FIXTURES, which form the group "tiny_run". That group goes first and the modules
    with slow tests next (with --no-loadscope-reorder the workers take groups in this order), so
    the long units start early and the short ones fill the gaps at the end.

    A group is the suffix "@group" of a test's id, read by xdist's loadgroup scheduler. xdist 3.8
    writes it into `item._nodeid` for `xdist_group` marks, which pytest 9 no longer reads (the id
    derives from `item._id`), so it is written here, once, into `_id`."""
    def module(item):
        return item.nodeid.split("::")[0]

    def shares_the_tiny_run(item):
        return bool(SHARED_WORKER_FIXTURES & set(getattr(item, "fixturenames", ())))

    slow_modules = {module(item) for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: (not shares_the_tiny_run(item), module(item) not in slow_modules))
    for item in items:
        group = "tiny_run" if shares_the_tiny_run(item) else module(item)
        item._id = type(item._id).parse(f"{item.nodeid}@{group}")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A working directory in which the whole default DAG has run once on tests/configs/tiny.yaml
    (shared by the workflow, DVC and SLURM tests)."""
    from snakemake_runner import snakemake

    workdir = tmp_path_factory.mktemp("tiny_run")
    snakemake(workdir, "--cores", "2")
    return workdir
