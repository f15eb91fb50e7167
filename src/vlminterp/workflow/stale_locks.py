"""Resume after kill -9 without `snakemake --unlock`, never unlocking a live Snakemake.

Snakemake locks a working directory with files in `.snakemake/locks/` that name no owner, so after
a killed run the same command stops with "Directory cannot be locked" until someone runs
`--unlock`, which would also break the locks of a Snakemake that is still running.

Every Snakemake started on this workflow (workflow/rules/common.smk, while the Snakefile is read,
before Snakemake looks at its locks) holds a shared `flock` on `.snakemake/vlminterp-live.flock`
until it exits; the kernel releases it however the process ends, kill -9 included. A process that
can take that flock exclusively is therefore the only live Snakemake here, so any lock files left
are stale, and it removes them. When another Snakemake is alive, nothing is touched and Snakemake
refuses to run on the same outputs as usual. (Across machines this relies on the file system's
`flock`, which NFS emulates with POSIX locks.)
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

LIVENESS_FILE = Path(".snakemake") / "vlminterp-live.flock"
SNAKEMAKE_LOCKS = Path(".snakemake") / "locks"

_held_descriptors: list[int] = []      # kept open (and locked) for the life of the process
_others_live: list[bool] = []           # whether another live Snakemake held the flock at start


def clear_stale_locks(workdir: Path) -> list[Path]:
    """Remove Snakemake's lock files in `workdir` when no other live Snakemake holds them, then
    mark this process live; returns the lock files removed."""
    liveness = Path(workdir) / LIVENESS_FILE
    liveness.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(liveness, os.O_RDWR | os.O_CREAT, 0o644)   # not inherited by jobs
    removed = []
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _others_live.append(True)                     # another Snakemake here is alive
    else:
        for lock in sorted((Path(workdir) / SNAKEMAKE_LOCKS).glob("*.lock")):
            lock.unlink(missing_ok=True)
            removed.append(lock)
    fcntl.flock(descriptor, fcntl.LOCK_SH)
    _held_descriptors.append(descriptor)
    return removed


def another_snakemake_running() -> bool:
    """True when another live Snakemake held this directory's flock when this one started."""
    return any(_others_live)


def explain_lock_refusal(workdir: Path) -> None:
    """While another Snakemake runs here, Snakemake's refusal to lock says so, instead of advising
    `--unlock` (which would remove the locks of the running one and let both write the same files)."""
    import snakemake.exceptions

    original = snakemake.exceptions.LockException
    if getattr(original, "vlminterp", False):
        return

    class LockException(original):      # the same name: the refusal reads as Snakemake's own
        vlminterp = True

        def __init__(self):
            snakemake.exceptions.WorkflowError.__init__(
                self,
                f"Another Snakemake is running in {Path(workdir).resolve()} and is creating some of the "
                f"same files (it holds {LIVENESS_FILE}). Wait for it to finish, or stop it, then run "
                "this command again (its own locks are removed when it ends, even by kill -9). "
                "Do not use --unlock while it runs.")

    snakemake.exceptions.LockException = LockException
