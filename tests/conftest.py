"""Shared pytest set-up: every test starts from the same seeds and runs on the CPU.

Markers (see pyproject.toml): slow, workflow, gpu, slurm, browser. GPU tests skip without CUDA.

`make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`), one test module at a
time each, except the SLURM tests, which share one cluster and so one worker. The session's tiny
run is built once for both workers and shared (tests/shared_run.py: file locks keep the tests that
change it in place apart from those that copy it or plan in it). Idle OpenMP threads sleep
(OMP_WAIT_POLICY=PASSIVE, inherited by every Snakemake job): with the default spinning policy two
torch processes on two cores slow each other 20-40x.
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
# One torch thread in each pytest worker (two workers share the cores); a Snakemake job sets its
# own (rule_context: the rule's threads), so the DAGs the tests run keep theirs.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# `import dvc` binds DVC's log handlers to the sys.stdout/stderr of that moment: imported here, they
# get pytest's session-long streams, not the `capsys` stream of whichever test imports it first
# (closed after that test, it made every later DVC call in the worker fail "I/O operation on closed file").
import dvc  # noqa: E402,F401

# Tests of these fixtures share one worker: one SLURM cluster per session.
ONE_WORKER_FIXTURES = {"slurm_cluster"}
# The module that builds the shared tiny run goes first (its own tests are quick once it exists).
BUILDS_THE_TINY_RUN = "tests/workflow/test_dag.py"


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
    ONE_WORKER_FIXTURES, which form the group "slurm". With --no-loadscope-reorder the workers take
    groups in the order set here: the module that builds the tiny run, then the slow groups that
    do not need it (the other worker runs them meanwhile), the SLURM group, the other slow groups,
    and the short ones last to fill the gaps.

    A group is the suffix "@group" of a test's id, read by xdist's loadgroup scheduler. xdist 3.8
    writes it into `item._nodeid` for `xdist_group` marks, which pytest 9 no longer reads (the id
    derives from `item._id`), so it is written here, once, into `_id`."""
    def module(item):
        return item.nodeid.split("::")[0]

    def uses(item, names):
        return bool(set(names) & set(getattr(item, "fixturenames", ())))

    def group(item):
        return "slurm" if uses(item, ONE_WORKER_FIXTURES) else module(item)

    by_group: dict[str, list] = {}
    for item in items:
        by_group.setdefault(group(item), []).append(item)

    def rank(name):
        members = by_group[name]
        slow = any("slow" in item.keywords for item in members)
        needs_tiny_run = any(uses(item, ("tiny_run", "organism_tables")) for item in members)
        if name == BUILDS_THE_TINY_RUN:
            return 0
        if slow:
            return 1 if not needs_tiny_run else 2 if name == "slurm" else 3
        return 4

    items[:] = [item for name in sorted(by_group, key=rank) for item in by_group[name]]
    for item in items:
        item._id = type(item._id).parse(f"{item.nodeid}@{group(item)}")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A working directory in which the whole default DAG has run on tests/configs/tiny.yaml, shared
    by the workflow, DVC and SLURM tests of every xdist worker (tests/shared_run.py). It is built by
    killing `snakemake --cores 2` with kill -9 once the organism's training has checkpointed and
    running the same command again (`build_killed_and_resumed`; tests/workflow/test_resume.py)."""
    import yaml

    from shared_run import build_killed_and_resumed, build_once
    from snakemake_runner import TINY_CONFIG

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):   # a worker's basetemp is <the run's basetemp>/popen-gwN
        base = base.parent
    run = yaml.safe_load(TINY_CONFIG.read_text())["run"]
    checkpoint = f"results/{run}/.model.checkpoint/checkpoint.pt"    # written by rule train_organism only
    return build_once(base / "tiny_run",
                      lambda workdir: build_killed_and_resumed(workdir, checkpoint, "--cores", "2"))
