"""Share a run's outputs through DVC so that a fresh clone need not recompute them.

    python -m vlminterp.workflow.artifacts push --run shapes-organism   # track results/<run>/* (+ data/), push
    python -m vlminterp.workflow.artifacts pull --run shapes-organism   # pull them, restore their provenance
    (`make push RUN=<run>` / `make pull RUN=<run>` wrap these; plain `dvc pull` works as well.)

Each stage directory directly under `results/<run>/` (data, model, organism, neo, kaduri, ...) is
one DVC output with its pointer file `results/<run>/<stage>.dvc` committed to git, so a user can
pull everything or one stage (`dvc pull results/<run>/model.dvc`). `data/` (the downloaded COCO
subset) is tracked by `data.dvc` the same way.

Snakemake decides what to rerun from file modification times (an input newer than an output, a
rule script newer than an output) and from its metadata in `.snakemake/metadata` (parameters,
input sets). DVC restores neither. `push` therefore writes `<stage>/.provenance.json` (inside the
tracked directory, so it travels with it): every path's mtime and Snakemake's metadata records of
the stage's outputs. After a pull, `restore_pulled_stages` (run by `pull` and, for a plain
`dvc pull`, by every `snakemake` call: workflow/rules/common.smk) puts both back:

* the times keep their recorded order, moved to just after this checkout's workflow code (which
  git checked out when the clone was made) and squeezed into at most one second before now, so no
  output looks older than its rule's script and none lies in the future;
* the metadata records make a later parameter change rerun what depends on it, as in the run that
  pushed.

A stage is restored once per checkout of its `.provenance.json` (`results/.pull-state.json`
remembers which), so outputs that Snakemake rewrites later are never touched again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

PROVENANCE_FILE = ".provenance.json"
PULL_STATE_FILE = Path("results") / ".pull-state.json"
SNAKEMAKE_METADATA = Path(".snakemake") / "metadata"
WORKFLOW_CODE = ("Snakefile", "workflow")       # what Snakemake compares output times with
MAX_SPREAD_NS = 1_000_000_000                   # restored times of one push fit in this window
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
        runs = sorted(p.name for p in (repo_root / "results").glob("*") if p.is_dir())
        raise ArtifactError(f"{run_dir} does not exist: runs here: {', '.join(runs) or 'none'}. "
                            f"Name one with RUN=<run> (make push RUN=<run>), or run it first "
                            f"(snakemake --cores all --configfile <its config>)")
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _path_mtimes(directory: Path) -> dict[str, int]:
    """Nanosecond mtime of the directory itself (".") and of everything below it."""
    stamps = {".": directory.stat().st_mtime_ns}
    for path in sorted(directory.rglob("*")):
        if path.name != PROVENANCE_FILE:
            stamps[path.relative_to(directory).as_posix()] = path.lstat().st_mtime_ns
    return stamps


def _metadata_key(record: Path, metadata_dir: Path) -> str:
    """The output path a Snakemake metadata record describes (its file name is the path in
    url-safe base64, split into '@'-prefixed directories when longer than a file name)."""
    from base64 import urlsafe_b64decode

    parts = record.relative_to(metadata_dir).parts
    return urlsafe_b64decode("".join(part.removeprefix("@") for part in parts)).decode()


def _metadata_records(workdir: Path, stage: str) -> dict[str, str]:
    """Snakemake's metadata records of the outputs under `stage` (a path relative to `workdir`),
    keyed by their path relative to .snakemake/metadata."""
    metadata_dir = workdir / SNAKEMAKE_METADATA
    if not metadata_dir.is_dir():
        return {}
    records = {}
    for record in sorted(p for p in metadata_dir.rglob("*") if p.is_file()):
        try:
            key = _metadata_key(record, metadata_dir)
        except ValueError:
            continue
        if key == stage or key.startswith(stage + "/"):
            records[record.relative_to(metadata_dir).as_posix()] = record.read_text()
    return records


def record_provenance(workdir: Path, directories: Sequence[Path]) -> None:
    """Write `<directory>/.provenance.json` for directories pushed together: the mtimes of their
    paths, the push's time span, and Snakemake's metadata records of their outputs."""
    stamps = {d: _path_mtimes(d) for d in directories}
    every_time = [t for s in stamps.values() for t in s.values()]
    push_span = [min(every_time), max(every_time)]
    state = _PullState.load(workdir)
    for directory, mtimes in stamps.items():
        relative = directory.relative_to(workdir).as_posix()
        content = {"push_span_ns": push_span, "mtimes_ns": mtimes,
                   "snakemake_metadata": _metadata_records(workdir, relative)}
        provenance = directory / PROVENANCE_FILE
        provenance.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
        # Writing the file bumped the directory's own time, which Snakemake reads for directory
        # outputs (results/<run>/model): put it back, and stamp the file like the newest path.
        os.utime(provenance, ns=(max(mtimes.values()),) * 2)
        os.utime(directory, ns=(mtimes["."],) * 2)
        state.restored[relative] = provenance.stat().st_mtime_ns    # nothing to restore here
    state.save()


class _PullState:
    """results/.pull-state.json of one checkout: which stage provenance files were restored (by
    their mtime), and the time mapping chosen for each push (so stages pulled one by one agree)."""

    def __init__(self, path: Path, content: dict):
        self.path = path
        self.restored: dict[str, int] = content.get("restored", {})
        self.mappings: dict[str, list[int | float]] = content.get("mappings", {})

    @classmethod
    def load(cls, workdir: Path) -> "_PullState":
        path = workdir / PULL_STATE_FILE
        try:
            return cls(path, json.loads(path.read_text()))
        except (FileNotFoundError, ValueError):
            return cls(path, {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"restored": self.restored, "mappings": self.mappings},
                                        indent=1, sort_keys=True) + "\n")

    def mapping(self, push_span: Sequence[int], code_root: Path) -> tuple[int, int, float]:
        """(first recorded time, its restored time, scale) for one push; chosen on first use."""
        key = str(push_span[0])
        if key not in self.mappings:
            span = max(push_span[1] - push_span[0], 1)
            spread = min(span, MAX_SPREAD_NS)
            newest_code = max((p.stat().st_mtime_ns for name in WORKFLOW_CODE
                               for p in [code_root / name, *(code_root / name).rglob("*")]
                               if p.exists()), default=0)
            anchor = max(time.time_ns() - spread, newest_code + 1_000_000)
            self.mappings[key] = [push_span[0], anchor, spread / span]
        first, anchor, scale = self.mappings[key]
        return int(first), int(anchor), float(scale)


def restore_pulled_stages(workdir: Path, code_root: Path, stages: Iterable[Path]) -> list[Path]:
    """Restore times and Snakemake metadata of every stage directory whose `.provenance.json`
    was checked out (by `dvc pull`/`dvc checkout`) since it was last restored; returns those.

    `workdir` holds results/ and .snakemake/; `code_root` the Snakefile and workflow/."""
    state = _PullState.load(workdir)
    restored = []
    for directory in stages:
        provenance = directory / PROVENANCE_FILE
        if not provenance.is_file():
            continue
        relative = directory.relative_to(workdir).as_posix()
        if state.restored.get(relative) == provenance.stat().st_mtime_ns:
            continue
        content = json.loads(provenance.read_text())
        first, anchor, scale = state.mapping(content["push_span_ns"], code_root)

        def restored_time(recorded: int) -> int:
            return anchor + max(0, int((recorded - first) * scale))

        mtimes = content["mtimes_ns"]
        # Deepest paths first, so stamping a file never bumps its directory's time afterwards.
        for rel in sorted(mtimes, key=lambda r: (r != ".", r.count("/")), reverse=True):
            path = directory / rel
            if path.exists() or path.is_symlink():
                os.utime(path, ns=(restored_time(mtimes[rel]),) * 2, follow_symlinks=False)
        metadata_dir = workdir / SNAKEMAKE_METADATA
        for record, text in content.get("snakemake_metadata", {}).items():
            target = metadata_dir / record
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        newest = restored_time(max(mtimes.values()))
        os.utime(provenance, ns=(newest, newest))
        os.utime(directory, ns=(restored_time(mtimes["."]),) * 2)
        state.restored[relative] = provenance.stat().st_mtime_ns
        restored.append(directory)
    if restored:
        state.save()
    return restored


def run_stage_dirs(workdir: Path, run: str) -> list[Path]:
    """Stage directories of `run` present in `workdir`, plus data/ (what `restore_pulled_stages`
    looks at when snakemake starts); none when the run has no outputs yet."""
    run_dir = workdir / "results" / run
    stages = stage_dirs(workdir, run) if run_dir.is_dir() else []
    return stages + [d for d in [workdir / "data"] if d.is_dir()]


def _repo(repo_root: Path):
    from dvc.repo import Repo

    return Repo(str(repo_root))


def _translate_remote_errors(error: Exception, where: str) -> ArtifactError:
    from dvc.exceptions import DvcException

    text = f"{error} ({where})"
    if isinstance(error, DvcException) and ("remote" in text.lower() or "No such file" in text
                                            or "checkout failed" in text.lower()):
        return ArtifactError(f"{text}\n\n{REMOTE_HELP}")
    return ArtifactError(text)


def remote_location(repo) -> tuple[str, str]:
    """The default remote's name and where it is: a local remote's absolute path (DVC resolves a
    relative one against the clone's .dvc/ directory, so each clone has its own), else its URL."""
    remote_name = repo.config["core"].get("remote")
    if not remote_name:
        raise ArtifactError(REMOTE_HELP)
    url = str(repo.config["remote"][remote_name]["url"])
    if "://" in url:
        return remote_name, url
    return remote_name, str((Path(repo.dvc_dir) / url).resolve())


def _describe(name: str, location: str) -> str:
    return f"DVC remote {name!r} at {location}"


def _check_remote(repo, *, for_pull: bool = False) -> str:
    """Fail with the command to configure a remote when none is set or a local one is missing (a
    pull: missing or empty); returns the remote's description, which every message names."""
    remote_name, location = remote_location(repo)
    where = _describe(remote_name, location)
    if "://" not in location:
        path = Path(location)
        if for_pull and (not path.is_dir() or not any(path.iterdir())):
            state = "does not exist" if not path.is_dir() else "is empty"
            raise ArtifactError(
                f"{where} {state}: nothing can be pulled from it. A relative remote (the default, "
                f"../vlminterp-dvc-storage) is resolved against each clone; point this clone at the "
                f"directory the results were pushed to:\n"
                f"  dvc remote add -d --local storage /absolute/path/to/vlminterp-dvc-storage")
        if not path.parent.is_dir():
            raise ArtifactError(f"{where}: its parent directory does not exist.\n\n{REMOTE_HELP}")
        path.mkdir(exist_ok=True)
    return where


def _enable_caching(pointer: Path) -> None:
    """Drop `cache: false` from a pointer committed without content (data.dvc before the first
    COCO run: uncached, so that `dvc pull` skips it instead of failing), so `dvc add` caches and
    `dvc push` uploads it."""
    if pointer.is_file():
        lines = pointer.read_text().splitlines(keepends=True)
        pointer.write_text("".join(line for line in lines if line.strip() != "cache: false"))


def push(repo_root: Path, run: str, *, extra: Iterable[Path] = ()) -> list[Path]:
    """Track the run's stage directories (and `extra` paths such as data/) and push them."""
    targets = stage_dirs(repo_root, run) + [p for p in extra if p.exists()]
    repo = _repo(repo_root)
    where = _check_remote(repo)
    print(f"pushing {len(targets)} directories to {where}", file=sys.stderr)
    record_provenance(repo_root, targets)
    for target in targets:
        _enable_caching(Path(f"{target}.dvc"))
    try:
        repo.add([str(t) for t in targets])
        repo.push([f"{t}.dvc" for t in targets])
    except Exception as error:  # DVC raises many types; report them plainly
        raise _translate_remote_errors(error, where) from None
    return targets


def has_hash(pointer: Path) -> bool:
    """Whether a `.dvc` pointer records the hash of its output (a declared but never pushed
    pointer, such as the committed `data.dvc` before the first COCO run, records none)."""
    import yaml

    outs = (yaml.safe_load(Path(pointer).read_text()) or {}).get("outs") or []
    return bool(outs) and all("md5" in out or "etag" in out for out in outs)


def pull(repo_root: Path, run: str, *, extra: Iterable[Path] = ()) -> list[Path]:
    """Pull every committed pointer of the run (and `extra`), then restore their provenance.

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
    where = _check_remote(repo, for_pull=True)
    print(f"pulling {len(pointers)} pointers from {where}", file=sys.stderr)
    try:
        repo.pull([str(p) for p in pointers])
    except Exception as error:
        raise _translate_remote_errors(error, where) from None
    pulled = [p.with_suffix("") for p in pointers]
    restore_pulled_stages(repo_root, repo_root, [d for d in pulled if d.is_dir()])
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
    print(f"({args.command}: {_describe(*remote_location(_repo(args.repo.resolve())))})")
    if args.command == "push":
        pointers = f"results/{args.run}/*.dvc results/{args.run}/.gitignore" + (" data.dvc" if args.data else "")
        print(f"Now commit the pointers, so that clones can pull them:\n"
              f"  git add {pointers} && git commit -m 'results of {args.run}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
