"""Run the real Snakemake CLI on the repository's Snakefile in a temporary directory (tests)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared_run import reading, writing

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TINY_CONFIG = ROOT / "tests" / "configs" / "tiny.yaml"


def snakemake_command(workdir: Path, *args: str, configfile: Path = TINY_CONFIG,
                      env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run `snakemake` on this checkout inside `workdir`."""
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), *args]
    # The rule scripts run in `workdir`: a relative PYTHONPATH (PYTHONPATH=src) would not reach this
    # checkout there, and they would silently import whatever vlminterp the environment has installed.
    python_path = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    return cmd, {**(env or os.environ), "PYTHONHASHSEED": "0", "PYTHONPATH": python_path}


def snakemake(workdir: Path, *args: str, configfile: Path = TINY_CONFIG, check: bool = True,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `snakemake` on the repository's Snakefile inside `workdir` and return the result."""
    cmd, env = snakemake_command(workdir, *args, configfile=configfile, env=env)
    plans_only = "-n" in args or "--dry-run" in args
    with (reading if plans_only else writing)(workdir):      # the shared tiny run: shared_run.py
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc
