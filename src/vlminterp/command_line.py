"""Snakemake command-line problems Snakemake reports as tracebacks, stated in one line each (#27).

Snakemake reads `--configfile` files and parses `--config` before it reads the Snakefile, so a
missing, empty or malformed config file, or a nested key given to `--config`, ends in a Python
traceback or a message naming neither file nor line. `make install` puts a one-line `.pth` hook in
the project's virtual environment (`python -m vlminterp.command_line --install-hook`) that runs
`check_argv_or_exit` when a program named `snakemake` starts there, before Snakemake parses its
arguments; nothing else is touched (any other program, or a problem found nowhere, returns at
once). Two `--configfile` flags are warned about by the Snakefile itself
(workflow/rules/common.smk, `two_configfile_flags`), with or without the hook.
"""
from __future__ import annotations

import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Sequence

HOOK_NAME = "vlminterp-snakemake-checks.pth"
HOOK_LINE = ("import sys, os; os.path.basename(sys.argv[0] if getattr(sys, 'argv', None) else '') == "
             "'snakemake' and __import__('vlminterp.command_line').command_line.check_argv_or_exit(sys.argv)\n")

_CONFIGFILE_FLAGS = ("--configfile", "--configfiles")


def configfile_flags(argv: Sequence[str]) -> list[list[str]]:
    """The files given by each `--configfile`/`--configfiles` flag of a command line, in order."""
    flags: list[list[str]] = []
    current: list[str] | None = None
    for word in argv[1:]:
        flag, _, value = word.partition("=")
        if flag in _CONFIGFILE_FLAGS:
            current = [value] if value else []
            flags.append(current)
            if value:
                current = None
            continue
        if word.startswith("-"):
            current = None
        elif current is not None:
            current.append(word)
    return flags


def config_entries(argv: Sequence[str]) -> list[str]:
    """The `key=value` entries given to `--config` (or `-C`)."""
    entries: list[str] = []
    collecting = False
    for word in argv[1:]:
        flag, _, value = word.partition("=")
        if flag in ("--config", "-C"):
            collecting = not value
            if value:
                entries.append(value)
            continue
        if word.startswith("-"):
            collecting = False
        elif collecting:
            entries.append(word)
    return entries


def two_configfile_flags(argv: Sequence[str]) -> str | None:
    """A warning when the command line carries several `--configfile` flags (Snakemake keeps only
    the last flag's files), naming the dropped files and the one-flag form; else None."""
    flags = [files for files in configfile_flags(argv) if files]
    if len(flags) < 2:
        return None
    dropped = [f for files in flags[:-1] for f in files]
    every = [f for files in flags for f in files]
    return (f"WARNING: {len(flags)} --configfile flags: Snakemake keeps only the last one's "
            f"({' '.join(flags[-1])}) and drops {' '.join(dropped)}. To merge files, give them to one "
            f"flag: --configfile {' '.join(every)}")


def config_file_problem(path: str, cwd: Path | None = None) -> str | None:
    """One line naming a config file that is missing, empty, not YAML (with its line) or not a
    mapping of keys; None for a usable file."""
    import yaml

    full = Path(cwd or Path.cwd()) / path
    if not full.is_file():
        return f"config file {path} not found (looked for {full.resolve()})"
    try:
        text = full.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return f"config file {path} is not a text (YAML) file: is it an output path given after --configfile?"
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        return f"config file {path}{where}: not valid YAML ({problem})"
    if loaded is None:
        return f"config file {path} is empty: a run's config is a YAML mapping of keys (see config.yaml)"
    if not isinstance(loaded, dict):
        return (f"config file {path}: a config is a YAML mapping of keys, this file holds a "
                f"{type(loaded).__name__}")
    return None


def nested_config_problem(entry: str) -> str | None:
    """Guidance for a `--config` entry Snakemake cannot take (a dotted, nested key); else None."""
    key, sep, value = entry.partition("=")
    if not sep or key.isidentifier():
        return None
    if all(part.isidentifier() for part in key.split(".")):
        parts = key.split(".")
        overlay = "".join(f"{'  ' * i}{part}:\n" for i, part in enumerate(parts[:-1]))
        overlay += f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}"
        return (f"--config {entry}: --config sets top-level keys only. Give a nested key in a small "
                f"overlay file, e.g. overlay.yaml holding\n{overlay}\nand name it after the run's "
                f"config in one flag: --configfile <run config> overlay.yaml")
    return f"--config {entry}: {key!r} is not a config key (keys are names such as seed or device)"


def command_line_problems(argv: Sequence[str], cwd: Path | None = None) -> list[str]:
    """Every config-file and --config problem of a Snakemake command line, one message each."""
    problems = [p for files in configfile_flags(argv) for f in files
                if (p := config_file_problem(f, cwd))]
    problems += [p for entry in config_entries(argv) if (p := nested_config_problem(entry))]
    return problems


def check_argv_or_exit(argv: Sequence[str]) -> None:
    """Print the command line's problems and exit 1 before Snakemake starts; never raises else."""
    try:
        problems = command_line_problems(argv)
    except Exception:        # the hook must never stand between a user and Snakemake
        return
    if problems:
        print("\n".join(f"Error: {p}" for p in problems), file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)          # from a .pth hook: SystemExit there would be a fatal start-up error


def install_hook(site_packages: Path | None = None) -> Path:
    """Write the `.pth` hook into this environment's site-packages; returns its path."""
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / HOOK_NAME
    target.write_text(HOOK_LINE)
    return target


if __name__ == "__main__":
    if sys.argv[1:] == ["--install-hook"]:
        print(f"installed {install_hook()}")
    else:
        sys.exit("usage: python -m vlminterp.command_line --install-hook")
