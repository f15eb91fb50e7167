"""Share a run's outputs through DVC so that a fresh clone need not recompute them.

    python -m vlminterp.artifacts push --run shapes-organism   # track results/<run>/* (+ data/), push
    python -m vlminterp.artifacts pull --run shapes-organism   # pull them, restore their timestamps
    (`make push` / `make pull` wrap these.)

Each stage directory directly under `results/<run>/` (data, model, organism, neo, kaduri, ...) is
one DVC output with its pointer file `results/<run>/<stage>.dvc` committed to git, so a user can
pull everything or one stage (`dvc pull results/<run>/model.dvc`). `data/` (the downloaded COCO
subset) is tracked by `data.dvc` the same way.

Snakemake decides what to rerun from file modification times, and DVC restores files with the
time of the checkout, in no particular order. `push` therefore records every file's mtime in
`<stage>/.mtimes.json` (inside the tracked directory, so it travels with it) and `pull` puts them
back, so that `snakemake -n` after a pull schedules nothing for the pulled stages and only the
stages whose outputs are still missing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

MTIMES_FILE = ".mtimes.json"
REMOTE_HELP = (
    "No DVC remote is configured (or it cannot be reached). Configure one, e.g.\n"
    "  dvc remote add -d --local storage /path/to/shared/dvc-storage     # a shared directory\n"
    "  dvc remote add -d --local storage s3://my-bucket/vlminterp         # S3 (pip install dvc-s3)\n"
    "then run the command again. (--local keeps the setting out of git, in .dvc/config.local.)"
)


class ArtifactError(RuntimeError):
    """A push or pull could not be done; the message says what to do."""


def stage_dirs(repo_root: Path, run: str) -> list[Path]:
    """The stage directories of one run: every directory directly under results/<run>/."""
    run_dir = repo_root / "results" / run
    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir} does not exist: run `snakemake --cores all` first "
                            f"(or check the run name, config key `run`)")
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def record_mtimes(directory: Path) -> Path:
    """Write `<directory>/.mtimes.json`: nanosecond mtime of every file and subdirectory."""
    stamps = {}
    for path in sorted(directory.rglob("*")):
        if path.name == MTIMES_FILE:
            continue
        stamps[path.relative_to(directory).as_posix()] = path.stat().st_mtime_ns
    manifest = directory / MTIMES_FILE
    manifest.write_text(json.dumps(stamps, indent=0, sort_keys=True))
    return manifest


def restore_mtimes(directory: Path) -> int:
    """Put back the mtimes recorded by `record_mtimes`; returns how many paths were stamped."""
    manifest = directory / MTIMES_FILE
    if not manifest.is_file():
        return 0
    stamps = json.loads(manifest.read_text())
    # Deepest paths first, so stamping a file never bumps its directory's time afterwards.
    for rel in sorted(stamps, key=lambda r: r.count("/"), reverse=True):
        path = directory / rel
        if path.exists():
            os.utime(path, ns=(stamps[rel], stamps[rel]), follow_symlinks=False)
    return len(stamps)


def _repo(repo_root: Path):
    from dvc.repo import Repo

    return Repo(str(repo_root))


def _translate_remote_errors(error: Exception) -> ArtifactError:
    from dvc.exceptions import DvcException

    text = str(error)
    if isinstance(error, DvcException) and ("remote" in text.lower() or "No such file" in text):
        return ArtifactError(f"{text}\n\n{REMOTE_HELP}")
    return ArtifactError(text)


def _check_remote(repo) -> None:
    """Fail with the command to configure a remote when none is set or a local one is missing."""
    remote_name = repo.config["core"].get("remote")
    if not remote_name:
        raise ArtifactError(REMOTE_HELP)
    url = repo.config["remote"][remote_name]["url"]
    if "://" not in url:
        base = Path(repo.dvc_dir)
        path = (base / url).resolve() if not os.path.isabs(url) else Path(url)
        if not path.parent.is_dir():
            raise ArtifactError(f"DVC remote {remote_name!r} points at {path}, whose parent "
                                f"directory does not exist.\n\n{REMOTE_HELP}")
        path.mkdir(exist_ok=True)


def push(repo_root: Path, run: str, *, extra: Iterable[Path] = ()) -> list[Path]:
    """Track the run's stage directories (and `extra` paths such as data/) and push them."""
    targets = stage_dirs(repo_root, run) + [p for p in extra if p.exists()]
    repo = _repo(repo_root)
    _check_remote(repo)
    for directory in targets:
        record_mtimes(directory)
    try:
        repo.add([str(t) for t in targets])
        repo.push([f"{t}.dvc" for t in targets])
    except Exception as error:  # DVC raises many types; report them plainly
        raise _translate_remote_errors(error) from None
    return targets


def has_hash(pointer: Path) -> bool:
    """Whether a `.dvc` pointer records the hash of its output (a declared but never pushed
    pointer, such as the committed `data.dvc` before the first COCO run, records none)."""
    import yaml

    outs = (yaml.safe_load(Path(pointer).read_text()) or {}).get("outs") or []
    return bool(outs) and all("md5" in out or "etag" in out for out in outs)


def pull(repo_root: Path, run: str, *, extra: Iterable[Path] = ()) -> list[Path]:
    """Pull every committed pointer of the run (and `extra`) and restore recorded mtimes.

    An `extra` pointer with no hash yet (nothing pushed for it) is skipped with a note on stderr.
    """
    run_dir = repo_root / "results" / run
    extra_pointers = []
    for path in extra:
        pointer = Path(f"{path}.dvc")
        if not pointer.exists():
            continue
        if has_hash(pointer):
            extra_pointers.append(pointer)
        else:
            print(f"{pointer.name} records no hash yet (nothing was pushed for {Path(path).name}/): skipped. "
                  f"After a run that fills it, `make push` uploads it.", file=sys.stderr)
    pointers = sorted(run_dir.glob("*.dvc")) + extra_pointers
    if not pointers:
        raise ArtifactError(f"no DVC pointer files (*.dvc) for run {run!r} under {run_dir}: "
                            f"nothing was pushed for it (make push RUN={run})")
    repo = _repo(repo_root)
    _check_remote(repo)
    try:
        repo.pull([str(p) for p in pointers])
    except Exception as error:
        raise _translate_remote_errors(error) from None
    pulled = [p.with_suffix("") for p in pointers]
    for directory in pulled:
        if directory.is_dir():
            restore_mtimes(directory)
    return pulled


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["push", "pull"])
    parser.add_argument("--run", required=True, help="run name (config key `run`)")
    parser.add_argument("--repo", default=".", type=Path, help="repository root (default: .)")
    parser.add_argument("--data", action="store_true", help="also push/pull data/ (data.dvc)")
    args = parser.parse_args(argv)
    extra = [args.repo / "data"] if args.data else []
    try:
        done = (push if args.command == "push" else pull)(args.repo.resolve(), args.run,
                                                          extra=[e.resolve() for e in extra])
    except ArtifactError as error:
        print(f"{args.command} failed: {error}", file=sys.stderr)
        return 1
    for path in done:
        print(f"{args.command}ed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
