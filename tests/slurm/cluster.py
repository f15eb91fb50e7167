"""A real, private, single-node SLURM cluster living in one temporary directory.

``LocalSlurmCluster`` starts ``munged``, ``slurmctld`` and ``slurmd`` (Debian's slurm-wlm 22.05,
installed by ``.ci/install-slurm``) as child processes of the test run and stops them again:

* every file the daemons write (munge key/socket/pid/log/seed, slurm.conf, StateSaveLocation,
  SlurmdSpoolDir, pid and log files, job logs) lives under ``self.root``, which is removed on exit;
  nothing under /etc, /run or /var is read or written (the package's /etc/munge/munge.key is not
  used: a fresh key is generated per cluster);
* slurmctld and slurmd listen on two free TCP ports picked at start-up, so two clusters (two test
  sessions) can run side by side on one machine;
* the client commands find the cluster through ``SLURM_CONF`` (``self.env``) and the munge socket
  through ``AuthInfo=socket=...`` in slurm.conf;
* ``self.bindir`` holds tiny wrappers (srun, sbatch, squeue, ...) that pin ``SLURM_CONF`` and is put
  first on ``PATH`` in ``self.env``: snakemake-executor-plugin-slurm-jobstep (<= 0.6.1) strips every
  ``SLURM_*`` variable, ``SLURM_CONF`` included, before it calls ``srun`` inside a job, and an
  ``srun`` without ``SLURM_CONF`` would look for /etc/slurm/slurm.conf and then DNS SRV records.

The daemons run in the foreground (``-D``/``-F``) in their own sessions, with PR_SET_PDEATHSIG so
they die with the test process even when it is killed without running its teardown.

No accounting: ``AccountingStorageType=accounting_storage/none``, so ``sacct`` only prints
"Slurm accounting storage is disabled"; job states come from ``squeue --states=all``, and
``MinJobAge`` is large (1 h) so finished jobs stay visible to it.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

#: Binaries the cluster needs; `.ci/install-slurm` installs all of them.
REQUIRED_BINARIES = (
    "munged",
    "munge",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "scancel",
    "sinfo",
    "srun",
    "scontrol",
)
#: Client commands wrapped in ``bindir`` so that they find the cluster without ``SLURM_CONF``.
CLIENT_COMMANDS = ("srun", "sbatch", "squeue", "scancel", "sinfo", "scontrol", "sacct", "salloc")
#: squeue states after which a job will not change any more.
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "SPECIAL_EXIT",
    }
)
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])


class SlurmNotInstalled(RuntimeError):
    """The SLURM/munge binaries are missing (run ``.ci/install-slurm``)."""


class ClusterStartError(RuntimeError):
    """The daemons did not come up; the message carries their log tails."""


def find_binary(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def missing_binaries() -> list[str]:
    return [b for b in REQUIRED_BINARIES if find_binary(b) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: ask the kernel to SIGTERM the daemon when the test process exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<unreadable: {exc}>"
    return "\n".join(text[-lines:]) if text else "<empty>"


class LocalSlurmCluster:
    """A single-node SLURM cluster inside ``workdir`` (a fresh temporary directory by default).

    One node (this machine's CPUs and memory, as ``slurmd -C`` reports them) in two partitions:
    ``partition`` (the default one) and ``alt_partition``.

    Use as a context manager::

        with LocalSlurmCluster() as cluster:
            subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env)

    ``workdir`` must be short (the munge socket path must fit in 108 bytes) and it and its parents
    must be traversable by everybody (munged refuses a socket in a directory it can't prove is
    reachable); the default, ``tempfile.mkdtemp()`` made 0755, satisfies both. The directory is
    removed on exit unless ``keep=True``.
    """

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        *,
        cluster_name: str = "vlmitest",
        partition: str = "debug",
        alt_partition: str = "alt",
        min_job_age: int = 3600,
        start_timeout: float = 60.0,
        keep: bool = False,
    ) -> None:
        self._given_workdir = Path(workdir) if workdir is not None else None
        self.cluster_name = cluster_name
        self.partition = partition
        self.alt_partition = alt_partition
        self.min_job_age = min_job_age
        self.start_timeout = start_timeout
        self.keep = keep
        self.root: Path | None = None
        self.env: dict[str, str] = {}
        self.node_name: str = ""
        self.node_spec: dict[str, str] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._created_root = False
        self._started = False

    # ------------------------------------------------------------------ paths
    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def bindir(self) -> Path:
        return self.root / "bin"

    @property
    def logdir(self) -> Path:
        return self.root / "log"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> "LocalSlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        missing = missing_binaries()
        if missing:
            raise SlurmNotInstalled(
                f"SLURM not installed (missing {', '.join(missing)}): run .ci/install-slurm"
            )
        try:
            self._make_root()
            self._start_munge()
            self._probe_node()
            self._write_conf()
            self._write_wrappers()
            self._start_slurm()
            self._wait_until_idle()
            self._started = True
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons, remove the directory. Safe to call twice."""
        if self.root is None:
            return
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self._cancel_all_jobs()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.get(name)
            if proc is not None:
                self._terminate(proc)
        self._kill_leftover_stepds()
        self._procs.clear()
        if self._created_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        self._started = False
        self.root = None

    # ------------------------------------------------------------- public API
    def run(self, args: Sequence[str], *, timeout: float = 30, check: bool = True, **kw):
        """Run a client command against this cluster and return the CompletedProcess."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(list(args), env=self.env, timeout=timeout, check=check, **kw)

    def sbatch(self, *args: str, timeout: float = 30) -> int:
        """``sbatch --parsable ARGS``; returns the job id.

        Without ``--output``/``-o`` in ARGS the job's log goes to ``logdir/job-<id>.out``, not
        to the caller's working directory.
        """
        if not any(a in ("-o", "--output") or a.startswith("--output=") for a in args):
            args = ("--output", str(self.logdir / "job-%j.out"), *args)
        out = self.run(["sbatch", "--parsable", *args], timeout=timeout).stdout.strip()
        return int(out.split(";")[0])

    def job_states(self, job_ids: Iterable[int] | None = None) -> dict[int, str]:
        """{job id: state} from ``squeue --states=all`` (finished jobs stay for MinJobAge)."""
        return self._squeue_field("%T", job_ids)

    def job_partitions(self, job_ids: Iterable[int]) -> dict[int, str]:
        """{job id: partition it ran in} from ``squeue --states=all``."""
        return self._squeue_field("%P", job_ids)

    def _squeue_field(self, field: str, job_ids: Iterable[int] | None) -> dict[int, str]:
        """{job id: one squeue format field} of the given jobs (all jobs when None)."""
        args = ["squeue", "--states=all", "--noheader", f"--format=%i|{field}"]
        ids = list(job_ids) if job_ids is not None else None
        if ids:
            args.append("--jobs=" + ",".join(str(i) for i in ids))
        rows = (line.strip().partition("|") for line in self.run(args, check=False).stdout.splitlines())
        return {int(jid): value for jid, _, value in rows if jid.isdigit()}

    def wait_job(self, job_id: int, timeout: float = 60) -> str:
        """Block until ``job_id`` is in a final state; return it."""
        deadline = time.monotonic() + timeout
        state = "UNKNOWN"
        while time.monotonic() < deadline:
            state = self.job_states([job_id]).get(job_id, "UNKNOWN")
            if state in FINAL_STATES:
                return state
            time.sleep(0.2)
        raise TimeoutError(f"SLURM job {job_id} still {state} after {timeout}s\n{self.log_tails()}")

    def all_job_ids(self) -> list[int]:
        return sorted(self.job_states())

    def snakemake_args(self) -> list[str]:
        """Snakemake CLI overrides (on top of profiles/slurm) suited to this test cluster.

        * ``--slurm-status-command squeue``: no accounting, so ``sacct`` cannot answer; the
          plugin would pick ``sacct`` on its own because the binary exists.
        * the first status check comes at once (``--seconds-between-status-checks 0``) and the
          one after a poll that saw a job finish 1 s later; but the plugin adds 10 s to the
          interval after every poll that saw nothing finish, so each wave of jobs still costs
          about 10 s of polling latency on top of its run time.
        """
        return [
            "--slurm-status-command",
            "squeue",
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--seconds-between-status-checks",
            "0",
        ]

    def log_tails(self, lines: int = 25) -> str:
        if self.root is None:
            return "<cluster directory already removed>"
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log", "munged.out", "slurmctld.out",
                     "slurmd.out"):
            path = self.logdir / name
            if path.exists():
                parts.append(f"--- {path} (last {lines} lines) ---\n{_tail(path, lines)}")
        return "\n".join(parts)

    def version(self) -> str:
        return self.run([find_binary("slurmd"), "-V"], check=False).stdout.strip()

    # -------------------------------------------------------------- internals
    def _make_root(self) -> None:
        if self._given_workdir is None:
            self.root = Path(tempfile.mkdtemp(prefix="vlmi-slurm-"))
            self._created_root = True
        else:
            self.root = self._given_workdir.resolve()
            self._created_root = not self.root.exists()
            self.root.mkdir(parents=True, exist_ok=True)
        # munged insists that every directory on the socket's path is traversable by all.
        self.root.chmod(0o755)
        for sub in ("munge", "state", "spool", "log", "bin"):
            (self.root / sub).mkdir(exist_ok=True)
        (self.root / "munge").chmod(0o755)
        if len(str(self.munge_socket).encode()) > 100:
            raise ClusterStartError(
                f"munge socket path {self.munge_socket} is too long for a unix socket; "
                "use a shorter workdir"
            )
        self.env = dict(os.environ)
        self.env["SLURM_CONF"] = str(self.conf)
        self.env["PATH"] = os.pathsep.join([str(self.bindir), self.env.get("PATH", ""),
                                            "/usr/sbin", "/sbin"])
        # Variables from an enclosing SLURM job or user defaults would leak into our sbatch calls.
        for var in list(self.env):
            if (var.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_"))
                    and var != "SLURM_CONF"):
                del self.env[var]

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        out = open(self.logdir / f"{name}.out", "wb")
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        self._procs[name] = proc
        return proc

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        m = self.root / "munge"
        proc = self._spawn(
            "munged",
            [
                find_binary("munged"),
                "--foreground",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={self.logdir / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
                "--num-threads=2",
            ],
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterStartError(f"munged exited with {proc.returncode}\n{self.log_tails()}")
            if self.munge_socket.exists():
                check = subprocess.run(
                    f"{find_binary('munge')} -n -S {self.munge_socket} | "
                    f"{find_binary('unmunge') or 'unmunge'} -S {self.munge_socket}",
                    shell=True, capture_output=True, text=True, timeout=10,
                )
                if check.returncode == 0:
                    return
            time.sleep(0.1)
        raise ClusterStartError(f"munged did not answer on {self.munge_socket}\n{self.log_tails()}")

    def _probe_node(self) -> None:
        """Hardware as slurmd sees it (`slurmd -C`), so the node is not drained for lying."""
        res = subprocess.run([find_binary("slurmd"), "-C"], capture_output=True, text=True,
                             timeout=30, env=self.env)
        first = res.stdout.splitlines()[0] if res.stdout else ""
        spec = dict(re.findall(r"(\w+)=(\S+)", first))
        if res.returncode != 0 or "CPUs" not in spec or "RealMemory" not in spec:
            raise ClusterStartError(f"`slurmd -C` failed ({res.returncode}): {res.stdout}{res.stderr}")
        # slurmctld only agrees to run where SlurmctldHost matches the short hostname.
        self.node_name = socket.gethostname().split(".")[0] or spec["NodeName"]
        self.node_spec = {k: spec[k] for k in ("CPUs", "Boards", "SocketsPerBoard",
                                               "CoresPerSocket", "ThreadsPerCore", "RealMemory")
                          if k in spec}

    def _write_conf(self) -> None:
        r = self.root
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = _free_port()
        node = " ".join(f"{k}={v}" for k, v in self.node_spec.items())
        conf = f"""\
# Generated by tests/slurm/cluster.py: a private single-node cluster; every path is under {r}.
ClusterName={self.cluster_name}
SlurmctldHost={self.node_name}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={self.logdir / 'slurmctld.log'}
SlurmdLogFile={self.logdir / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: track job processes through /proc, no task confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# Cores and memory are the consumable resources; a job without --mem gets DefMemPerCPU.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SchedulerType=sched/builtin
# No slurmdbd: sacct cannot answer; finished jobs stay in squeue for MinJobAge seconds.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge={self.min_job_age}
MaxJobCount=100000
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
KillWait=5
InactiveLimit=0
Waittime=0
NodeName={self.node_name} NodeAddr=127.0.0.1 {node} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node_name} Default=YES MaxTime=INFINITE State=UP
# Same node, not the default: lets tests check that a requested partition is honoured.
PartitionName={self.alt_partition} Nodes={self.node_name} Default=NO MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)

    def _write_wrappers(self) -> None:
        for cmd in CLIENT_COMMANDS:
            real = find_binary(cmd)
            if real is None:
                continue
            wrapper = self.bindir / cmd
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {real} "$@"\n')
            wrapper.chmod(0o755)

    def _start_slurm(self) -> None:
        self._spawn("slurmctld", [find_binary("slurmctld"), "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [find_binary("slurmd"), "-D", "-N", self.node_name,
                               "-f", str(self.conf)])

    def _wait_until_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            for name in ("munged", "slurmctld", "slurmd"):
                proc = self._procs[name]
                if proc.poll() is not None:
                    raise ClusterStartError(
                        f"{name} exited with {proc.returncode} during start-up\n{self.log_tails()}"
                    )
            res = self.run(["sinfo", "--noheader", "--Node", "--format=%T"], check=False, timeout=10)
            last = (res.stdout + res.stderr).strip()
            # one line per (node, partition) the node is in
            if res.returncode == 0 and last and set(last.split()) == {"idle"}:
                return
            time.sleep(0.3)
        raise ClusterStartError(
            f"node {self.node_name} not idle after {self.start_timeout}s (sinfo: {last!r})\n"
            f"{self.log_tails()}"
        )

    def _cancel_all_jobs(self) -> None:
        try:
            active = [j for j, s in self.job_states().items() if s not in FINAL_STATES]
            if not active:
                return
            self.run(["scancel", *map(str, active)], check=False, timeout=15)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                states = self.job_states(active)
                if all(s in FINAL_STATES for s in states.values()):
                    return
                time.sleep(0.3)
        except (subprocess.SubprocessError, OSError):
            pass

    @staticmethod
    def _terminate(proc: subprocess.Popen, grace: float = 10) -> None:
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def _kill_leftover_stepds(self) -> None:
        """slurmstepd outlives slurmd; kill only the ones that belong to this cluster."""
        marker = f"SLURM_CONF={self.conf}".encode()
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                if not (pid_dir / "comm").read_text().startswith("slurmstepd"):
                    continue
                environ = (pid_dir / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                try:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
