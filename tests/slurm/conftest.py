"""Fixtures for the `slurm` tests: one private SLURM cluster per test session.

The cluster (tests/slurm/cluster.py) is only started when a `slurm` test is selected, and is torn
down at the end of the session (jobs cancelled, daemons stopped, temporary directory removed).

Skips, each with its reason in the pytest summary:
* the SLURM/munge binaries are missing -> "SLURM not installed: run .ci/install-slurm";
* the daemons do not come up on this machine -> the start-up error and the daemons' log tails.
  Set VLMINTERP_REQUIRE_SLURM=1 (CI, after .ci/install-slurm) to turn that second case into an
  error instead of a skip.
"""
from __future__ import annotations

import os

import pytest

from .cluster import ClusterStartError, LocalSlurmCluster, SlurmNotInstalled, missing_binaries


@pytest.fixture(scope="session")
def slurm_cluster():
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM not installed: run .ci/install-slurm (missing: {', '.join(missing)})")
    cluster = LocalSlurmCluster()
    try:
        cluster.start()
    except SlurmNotInstalled as exc:  # pragma: no cover - raced with an uninstall
        pytest.skip(f"SLURM not installed: run .ci/install-slurm ({exc})")
    except ClusterStartError as exc:
        if os.environ.get("VLMINTERP_REQUIRE_SLURM") == "1":
            raise
        pytest.skip(f"SLURM cluster could not start on this machine: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm_plugin_version(slurm_cluster):
    """Version of snakemake-executor-plugin-slurm; skips when it is not installed."""
    pytest.importorskip(
        "snakemake_executor_plugin_slurm",
        reason="snakemake-executor-plugin-slurm not installed (see requirements.lock)",
    )
    from importlib.metadata import version

    return version("snakemake-executor-plugin-slurm")
