"""The session's tiny run, built once for every pytest-xdist worker and shared between them.

It is built as a user's story (`build_killed_and_resumed`): the DAG command is killed with kill -9
in the middle of the organism's training and the same command is run again to the end; what the
build saw is kept in `<run>.build/` beside the run (tests/workflow/test_resume.py reads it).

    from shared_run import copy_tiny_run, writing

    copy_tiny_run(tiny_run, tmp_path / "work")                     # the whole run directory
    copy_tiny_run(tiny_run, dest, "results/tiny", ".snakemake/metadata")   # some of it
    with writing(tiny_run):                                        # change the run in place
        ...

Two file locks beside the run directory (`fcntl.flock`, so a killed worker releases them):
* `<run>.build.lock`: the first worker to need the run builds it; the others wait and reuse it.
* `<run>.access.lock`: whatever changes the run in place holds it exclusively (a real Snakemake
  run or a report inside it, deleting an output); whatever copies it, or plans in it with `-n`,
  holds it shared. So no copy ever catches a half-written file or a live `.snakemake/locks`
  entry, and no dry run sees an output another test has just deleted. `snakemake_runner`
  takes the access lock by itself when its working directory is a shared run.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

COMPLETE = ".tiny-run-complete"   # written last: the run finished and may be reused
_HELD: dict[Path, int] = {}       # access locks this process holds (flock would block on a second open)


def _access_lock(run_dir: Path) -> Path:
    return run_dir.parent / f"{run_dir.name}.access.lock"


def is_shared(run_dir: Path) -> bool:
    """Whether `run_dir` is a shared run (copies of it are not)."""
    return _access_lock(Path(run_dir)).exists()


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_record(run_dir: Path) -> Path:
    """`<run>.build/`: what the build of a shared run saw (outputs, facts.json), beside the run."""
    return Path(run_dir).parent / f"{Path(run_dir).name}.build"


def build_once(run_dir: Path, build: Callable[[Path], None]) -> Path:
    """`build(run_dir)` unless another process already completed it; a failed or interrupted build
    (and its record) is removed and made again by the next process that asks."""
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    _access_lock(run_dir).touch()
    with _flock(run_dir.parent / f"{run_dir.name}.build.lock", fcntl.LOCK_EX):
        if not (run_dir / COMPLETE).is_file():
            for directory in (run_dir, build_record(run_dir)):
                shutil.rmtree(directory, ignore_errors=True)
                directory.mkdir()
            build(run_dir)
            (run_dir / COMPLETE).touch()
    return run_dir


def build_killed_and_resumed(run_dir: Path, checkpoint: str, *args: str, timeout_s: float = 1200.0) -> None:
    """Run `snakemake *args` in `run_dir` as a user who kills it mid-job: start it, wait for
    `checkpoint` (a path in `run_dir` that only the job to be killed writes), start the same command
    again (Snakemake must refuse it while the first lives), kill -9 the first's process group, then
    run the same command (no --unlock) to the end. Into `build_record(run_dir)`: the outputs of the
    three commands (killed.log, refused.log, resumed.log) and facts.json (what was seen after the
    refusal and after the kill, return codes, wall seconds)."""
    from snakemake_runner import snakemake, snakemake_command   # it imports this module

    record, started = build_record(run_dir), time.monotonic()
    cmd, env = snakemake_command(run_dir, *args)
    with open(record / "killed.log", "w") as log:
        first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(run_dir / checkpoint, first, timeout_s, record / "killed.log")
        checkpointed = time.monotonic()
        refused = snakemake(run_dir, *args, check=False)
        first_alive = first.poll() is None
    finally:
        with contextlib.suppress(ProcessLookupError):   # its group is gone already
            os.killpg(first.pid, signal.SIGKILL)        # Snakemake and its jobs
        first.wait()
    (record / "refused.log").write_text(refused.stdout + refused.stderr)
    facts = {"refused_returncode": refused.returncode, "first_alive_after_the_refusal": first_alive,
             "locks_after_the_kill": sorted(p.name for p in (run_dir / ".snakemake" / "locks").glob("*.lock")),
             "checkpoint_after_the_kill": (run_dir / checkpoint).is_file(),
             "wall_s": {"until_the_checkpoint": round(checkpointed - started, 1),
                        "refused": round(time.monotonic() - checkpointed, 1)}}
    resuming = time.monotonic()
    resumed = snakemake(run_dir, *args, check=False)
    (record / "resumed.log").write_text(resumed.stdout + resumed.stderr)
    facts["resumed_returncode"] = resumed.returncode
    facts["wall_s"]["resumed"] = round(time.monotonic() - resuming, 1)
    (record / "facts.json").write_text(json.dumps(facts, indent=1))
    if resumed.returncode:
        raise AssertionError(f"the resumed {' '.join(cmd)} failed ({resumed.returncode}); "
                             f"see {record}/resumed.log:\n{resumed.stderr[-4000:]}")


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float, output: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        ended = process.poll() is not None
        if ended or time.monotonic() > deadline:
            why = f"snakemake ended ({process.returncode})" if ended else f"{timeout_s:.0f} s passed"
            raise AssertionError(f"{why} before {path} appeared, so the kill -9 could not land during its "
                                 f"job; the end of its output ({output}):\n{output.read_text()[-4000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def _access(run_dir: Path, mode: int) -> Iterator[None]:
    lock = _access_lock(Path(run_dir).resolve())
    if not lock.exists() or _HELD.get(lock):     # not a shared run, or already held by this process
        yield
        return
    with _flock(lock, mode):
        _HELD[lock] = 1
        try:
            yield
        finally:
            _HELD.pop(lock)


def writing(run_dir: Path):
    """Hold a shared run exclusively (no-op for a directory that is not one)."""
    return _access(run_dir, fcntl.LOCK_EX)


def reading(run_dir: Path):
    """Hold a shared run against changes in place (no-op for a directory that is not one)."""
    return _access(run_dir, fcntl.LOCK_SH)


def copy_tiny_run(run_dir: Path, dest: Path, *parts: str) -> Path:
    """Copy the run directory (or only `parts` of it, relative paths) to `dest`, keeping times."""
    run_dir, dest = Path(run_dir), Path(dest)
    with reading(run_dir):
        for part in parts or (".",):
            source, target = run_dir / part, dest / part
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, copy_function=shutil.copy2, symlinks=True,
                                dirs_exist_ok=True, ignore=shutil.ignore_patterns(COMPLETE))
            else:
                shutil.copy2(source, target)
    return dest
