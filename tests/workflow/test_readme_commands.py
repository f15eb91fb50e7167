"""Every command in README.md's fenced shell blocks runs as printed (issue #27), so the README
cannot drift from the tool again.

Each ```bash block is run by bash from the root of a copy of this checkout, in which the tiny run's
results (the session's `tiny_run`) are present. The only changes made to a printed command:
- a run's config: `C=<config>; R=<run>` becomes `C=tests/configs/tiny.yaml; R=tiny`;
- `snakemake ...` gets `-n` right after `snakemake` (a dry run: the whole command line is parsed
  and the DAG built exactly as printed; a real run of a paper config needs a GPU and COCO), except
  `--report`, which runs for real on the tiny run's results;
- `python -m vlminterp.across_runs` reads `results/tiny` for every run it names;
- `make <target>` gets `-n` (its recipe is printed, not run: `make reproduce` and `make test` take
  minutes to hours; their commands are the ones tested here and in tests/workflow/test_dvc_roundtrip.py).
A command the test does not run is listed in NOT_RUN with the test that covers it; a new command
in README.md that is neither run nor listed fails the test.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rehearsal import copy_checkout
from shared_run import copy_tiny_run
from snakemake_runner import ROOT

pytestmark = pytest.mark.workflow

# Exact README lines (comment stripped) that are not run here, and why.
NOT_RUN = {
    'git add results/tiny/*.dvc results/tiny/.gitignore && git commit -m "results of tiny"':
        "commits to the user's repository; tests/workflow/test_dvc_roundtrip.py commits the pointers",
    "dvc pull": "needs pushed results and a remote: tests/workflow/test_dvc_roundtrip.py",
    "dvc remote add -d --local storage /shared/lab/vlminterp-dvc":
        "a clone's own remote: tests/workflow/test_dvc_roundtrip.py uses an absolute shared remote",
    "dvc remote add -d --local storage s3://my-bucket/vlminterp": "needs S3 credentials and dvc-s3",
}

TINY_RUN = ("C=tests/configs/tiny.yaml; R=tiny", "tiny")


def readme_blocks(text: str) -> list[list[str]]:
    """The command lines of each fenced shell block of a Markdown text (comments stripped)."""
    blocks = re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, re.M | re.S)
    result = []
    for block in blocks:
        lines = []
        for line in block.splitlines():
            command = re.sub(r"(^|\s+)#.*$", "", line).strip()
            if command:
                lines.append(command)
        result.append(lines)
    return result


def as_tested(command: str) -> str | None:
    """The command as this test runs it (see the module docstring), None when it is not run."""
    if command in NOT_RUN:
        return None
    if re.fullmatch(r"C=\S+; R=\S+", command):
        return TINY_RUN[0]
    words = command.split()
    if words[0] == "snakemake":
        if "--report" in words or "-n" in words:
            return command
        return "snakemake -n" + command[len("snakemake"):]
    if words[0] == "make":
        return "make -n" + command[len("make"):]
    if words[:3] == ["python", "-m", "vlminterp.across_runs"]:   # each run it names: the tiny run
        return re.sub(r"results/(?!across_runs)\S+", "results/tiny", command)
    if words[0] in ("export", "printf"):        # an environment variable, an overlay file
        return command
    raise AssertionError(f"README.md command not run by this test and not in NOT_RUN: {command!r}")


def test_readme_blocks_are_found():
    blocks = readme_blocks((ROOT / "README.md").read_text())
    commands = [c for block in blocks for c in block]
    assert any("--report" in c for c in commands) and any(c.startswith("make") for c in commands)
    assert any(re.search(r"snakemake .*results/\$R/\S+\.png", c) for c in commands), \
        "README says how to build one target"


@pytest.fixture(scope="module")
def readme_checkout(tiny_run, tmp_path_factory):
    """A copy of the checkout holding the tiny run's results and Snakemake metadata."""
    checkout = copy_checkout(tmp_path_factory.mktemp("readme_checkout"))
    copy_tiny_run(tiny_run, checkout, "results/tiny", ".snakemake/metadata")
    return checkout


def test_every_readme_command_runs_as_printed(readme_checkout):
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([venv_bin, os.environ["PATH"]]),
           "PYTHONHASHSEED": "0", "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(readme_checkout / "src"),
                                          *filter(None, [os.environ.get("PYTHONPATH")])])}
    ran = 0
    for block in readme_blocks((ROOT / "README.md").read_text()):
        tested = [t for t in map(as_tested, block) if t is not None]
        prelude = [t for t in tested if t.startswith(("export ", "C="))]
        for line in tested:
            if line in prelude:
                continue
            proc = subprocess.run(["bash", "-c", "\n".join(["set -e", *prelude, line])],
                                  cwd=readme_checkout, capture_output=True, text=True, env=env)
            assert proc.returncode == 0, (f"README command failed as printed: {line}\n"
                                          f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
            ran += 1
    assert ran >= 14
    assert (readme_checkout / "results" / "tiny" / "report.html").stat().st_size > 0
    assert (readme_checkout / "gpu.yaml").exists() and (readme_checkout / "overlay.yaml").exists()
