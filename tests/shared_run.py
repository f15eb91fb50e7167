"""The session's tiny run, built once for every pytest-xdist worker and shared between them.

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
import shutil
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


def build_once(run_dir: Path, build: Callable[[Path], None]) -> Path:
    """`build(run_dir)` unless another process already completed it; a failed or interrupted build
    is removed and made again by the next process that asks."""
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    _access_lock(run_dir).touch()
    with _flock(run_dir.parent / f"{run_dir.name}.build.lock", fcntl.LOCK_EX):
        if not (run_dir / COMPLETE).is_file():
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir()
            build(run_dir)
            (run_dir / COMPLETE).touch()
    return run_dir


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
