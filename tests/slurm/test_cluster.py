"""End-to-end tests of the SLURM harness and of profiles/slurm on a real single-node cluster.

Each workflow test runs the real `snakemake` CLI with `--profile profiles/slurm` plus the test
cluster's overrides (`LocalSlurmCluster.snakemake_args()`: squeue status, 1 s polling) on a small
self-contained Snakefile written to a temporary directory. Every rule writes the SLURM job id it
ran under (`$SLURM_JOB_ID`, "local" outside SLURM) to ids/<rule>_<shard>.id and appends
"<rule> <shard> <job id>" to ledger.txt, which tells which jobs ran and where.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm"
OVERHEAD_JSON = REPO / "benchmarks" / "results" / "slurm_overhead.json"
SNAKEMAKE_TIMEOUT = 150  # seconds per snakemake invocation

SHARDS = ("s1", "s2", "s3")

# prepare -> scatter{shard} x3 -> gather; `all` runs on the submit host.
# A scatter shard fails while a file fail_<shard> exists in the working directory, so the test
# can break and fix a shard without changing the Snakefile (no code-change rerun triggers).
SNAKEFILE = textwrap.dedent(
    r'''
    SHARDS = ["s1", "s2", "s3"]

    localrules: all

    rule all:
        input: "data/gathered.txt"

    rule prepare:
        output: data="data/base.txt", jid="ids/prepare_all.id"
        threads: 1
        resources: mem_mb=100, runtime=5
        shell:
            """
            seq 1 100 > {output.data}
            echo ${{SLURM_JOB_ID:-local}} > {output.jid}
            echo "prepare all ${{SLURM_JOB_ID:-local}}" >> ledger.txt
            """

    rule scatter:
        input: "data/base.txt"
        output: data="data/shard_{shard}.txt", jid="ids/scatter_{shard}.id"
        threads: 1
        resources: mem_mb=100, runtime=5
        shell:
            """
            echo "scatter {wildcards.shard} ${{SLURM_JOB_ID:-local}}" >> ledger.txt
            if [ -e fail_{wildcards.shard} ]; then echo "shard {wildcards.shard} broken" >&2; exit 1; fi
            n=$(echo {wildcards.shard} | tr -dc 0-9)
            awk -v n=$n '{{ s += $1 * n }} END {{ print "{wildcards.shard}", s }}' {input} > {output.data}
            echo ${{SLURM_JOB_ID:-local}} > {output.jid}
            """

    rule gather:
        input: expand("data/shard_{shard}.txt", shard=SHARDS)
        output: data="data/gathered.txt", jid="ids/gather_all.id"
        threads: 1
        resources: mem_mb=100, runtime=5
        shell:
            """
            cat {input} > {output.data}
            echo ${{SLURM_JOB_ID:-local}} > {output.jid}
            echo "gather all ${{SLURM_JOB_ID:-local}}" >> ledger.txt
            """
    '''
)

# --------------------------------------------------------------------------------- helpers
def _snakemake(workdir: Path, args: list[str], env: dict[str, str], timeout=SNAKEMAKE_TIMEOUT):
    """Run the snakemake CLI of this interpreter's environment in `workdir`."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(workdir / "Snakefile"),
           "--directory", str(workdir), "--nocolor", *args]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"snakemake timed out after {timeout}s: {' '.join(cmd)}\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def _slurm_snakemake(cluster, workdir: Path, *extra: str, env_extra=None, **kw):
    args = ["--executor", "slurm", "--profile", str(PROFILE), *cluster.snakemake_args(), *extra]
    return _snakemake(workdir, args, _job_env(cluster, env_extra), **kw)


def _job_env(cluster, env_extra=None) -> dict[str, str]:
    env = dict(cluster.env)
    env.pop("VLMINTERP_SLURM_PARTITION", None)
    env.pop("VLMINTERP_SLURM_ACCOUNT", None)
    env.update(env_extra or {})
    # The jobs inherit this environment (sbatch --export=ALL): same interpreter first on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    return env


def _workflow(tmp_path: Path, name: str, snakefile: str = SNAKEFILE) -> Path:
    wd = tmp_path / name
    wd.mkdir()
    (wd / "Snakefile").write_text(snakefile)
    return wd


def _ledger(wd: Path) -> list[tuple[str, str, str]]:
    path = wd / "ledger.txt"
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines() if line.strip()]


def _ids(wd: Path) -> dict[str, str]:
    return {p.stem: p.read_text().strip() for p in sorted((wd / "ids").glob("*.id"))}


def _assert_ok(res, what: str) -> None:
    assert res.returncode == 0, f"{what} failed (rc={res.returncode}):\n{res.stdout[-8000:]}"


# ----------------------------------------------------------------------------------- tests
def test_sbatch_wrap_job_completes(slurm_cluster, tmp_path):
    out = tmp_path / "wrap.out"
    jid = slurm_cluster.sbatch("--wrap", "echo hello from $SLURM_JOB_ID on $(hostname)",
                               "--output", str(out), "--time", "1", "--mem", "50")
    assert slurm_cluster.wait_job(jid, timeout=60) == "COMPLETED"
    assert out.read_text().startswith(f"hello from {jid} on ")


def test_workflow_runs_every_job_through_slurm(slurm_cluster, slurm_plugin_version, tmp_path):
    local = _workflow(tmp_path, "local")
    t0 = time.monotonic()
    res = _snakemake(local, ["--cores", "2"], _job_env(slurm_cluster))
    local_s = time.monotonic() - t0
    _assert_ok(res, "local run")
    assert set(_ids(local).values()) == {"local"}

    wd = _workflow(tmp_path, "slurm")
    t0 = time.monotonic()
    res = _slurm_snakemake(slurm_cluster, wd)
    slurm_s = time.monotonic() - t0
    _assert_ok(res, "SLURM run")

    ids = _ids(wd)
    assert set(ids) == {"prepare_all", "gather_all", *(f"scatter_{s}" for s in SHARDS)}
    assert all(v.isdigit() for v in ids.values()), ids
    job_ids = [int(v) for v in ids.values()]
    assert len(set(job_ids)) == len(job_ids), f"jobs shared a SLURM job: {ids}"
    states = slurm_cluster.job_states(job_ids)
    assert all(states.get(j) == "COMPLETED" for j in job_ids), states
    # Every rule ran exactly once, each in the SLURM job recorded in its output.
    assert sorted(_ledger(wd)) == sorted(
        (k.split("_", 1)[0], k.split("_", 1)[1], v) for k, v in ids.items())
    assert (wd / "data" / "gathered.txt").read_text() == (local / "data" / "gathered.txt").read_text()
    assert (wd / "data" / "gathered.txt").read_text() == "s1 5050\ns2 10100\ns3 15150\n"
    # Logs kept by the profile's slurm-keep-successful-logs, one per SLURM job.
    logs = sorted(int(p.stem) for p in (wd / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert logs == sorted(job_ids)

    n_jobs = len(job_ids)
    result = {
        "what": "wall time of the 5-job test DAG (prepare, 3x scatter, gather) through "
                "--executor slurm minus the same DAG run locally (--cores 2), per SLURM job",
        "n_slurm_jobs": n_jobs,
        "local_wall_s": round(local_s, 2),
        "slurm_wall_s": round(slurm_s, 2),
        "overhead_per_job_s": round((slurm_s - local_s) / n_jobs, 2),
        "status_polling": " ".join(slurm_cluster.snakemake_args()),
        "slurm_version": slurm_cluster.version(),
        "snakemake_executor_plugin_slurm": slurm_plugin_version,
        "node": f"{slurm_cluster.node_spec.get('CPUs')} CPUs, "
                f"{slurm_cluster.node_spec.get('RealMemory')} MB",
        "python": platform.python_version(),
    }
    print("\nSLURM overhead:", json.dumps(result, indent=2))
    if os.environ.get("VLMINTERP_RECORD_BENCHMARKS"):  # keep `make test` from editing tracked files
        from vlminterp.io import write_json

        write_json(result, OVERHEAD_JSON)


def test_rerun_after_failure_runs_only_missing_jobs(slurm_cluster, slurm_plugin_version,
                                                    tmp_path):
    """A shard that fails is resubmitted once as a new SLURM job (profiles/slurm's `retries: 1`) in
    the partition VLMINTERP_SLURM_PARTITION names; once fixed, the same command runs only that
    shard and what depends on it."""
    wd = _workflow(tmp_path, "rerun")
    (wd / "fail_s2").touch()
    partition = {"VLMINTERP_SLURM_PARTITION": slurm_cluster.alt_partition}
    res = _slurm_snakemake(slurm_cluster, wd, "--keep-going", env_extra=partition)
    assert res.returncode != 0, res.stdout[-4000:]
    first_ids = _ids(wd)
    assert set(first_ids) == {"prepare_all", "scatter_s1", "scatter_s3"}, first_ids
    first_ledger = _ledger(wd)
    assert sorted((r, s) for r, s, _ in first_ledger) == [
        ("prepare", "all"), ("scatter", "s1"), ("scatter", "s2"), ("scatter", "s2"), ("scatter", "s3")]
    attempts = [int(j) for r, s, j in first_ledger if s == "s2"]
    assert attempts[0] != attempts[1], "the retry must be a new SLURM job"
    assert slurm_cluster.job_states(attempts) == {attempts[0]: "FAILED", attempts[1]: "FAILED"}
    every_job = [int(j) for _, _, j in first_ledger]
    assert set(slurm_cluster.job_partitions(every_job).values()) == {slurm_cluster.alt_partition}

    (wd / "fail_s2").unlink()
    res = _slurm_snakemake(slurm_cluster, wd)
    _assert_ok(res, "rerun after fixing the shard")
    new_runs = _ledger(wd)[len(first_ledger):]
    assert sorted((r, s) for r, s, _ in new_runs) == [("gather", "all"), ("scatter", "s2")]
    ids = _ids(wd)
    for key in ("prepare_all", "scatter_s1", "scatter_s3"):
        assert ids[key] == first_ids[key], f"{key} was rerun"
    new_jids = {int(ids["scatter_s2"]), int(ids["gather_all"])}
    assert min(new_jids) > max(every_job)
    assert not new_jids & set(attempts)
    assert (wd / "data" / "gathered.txt").read_text() == "s1 5050\ns2 10100\ns3 15150\n"
