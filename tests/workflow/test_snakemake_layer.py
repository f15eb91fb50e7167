"""The Snakemake layer as users meet it: `snakemake --lint` is clean from the repository root (the
default run and the LLaVA-1.5 paper config define every rule between them), and the jobs' software
environment (envs/torch.yaml, which every rule names) holds every package a rule script imports,
through the library."""
from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# The default run and a paper config with the authors' files on define every rule between them.
CONFIGS = ["config.yaml", "configs/llava-1.5-7b.yaml"]


@pytest.mark.parametrize("configfile", CONFIGS)
def test_lint_is_clean(configfile):
    result = subprocess.run([str(SNAKEMAKE), "--lint", "--configfile", configfile], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    lints = re.findall(r"^Lints for .*$", result.stdout + result.stderr, re.M)
    assert result.returncode == 0 and not lints, f"{configfile}:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in a Python file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _library_file(module: str) -> Path | None:
    parts = module.split(".")
    for candidate in (ROOT / "src" / Path(*parts)).with_suffix(".py"), ROOT / "src" / Path(*parts) / "__init__.py":
        if candidate.exists():
            return candidate
    return None


def _third_party_imports_of_jobs() -> set[str]:
    """Top-level third-party modules the rule scripts import, following the library's own imports."""
    seen, todo, third_party = set(), list((ROOT / "workflow" / "scripts").glob("*.py")), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path):
            top = module.split(".")[0]
            if top == "vlminterp":
                parts = module.split(".")
                for depth in range(1, len(parts) + 1):  # the package __init__s on the way, too
                    found = _library_file(".".join(parts[:depth]))
                    if found:
                        todo.append(found)
            elif top not in sys.stdlib_module_names and top not in ("__future__", "snakemake"):
                third_party.add(top)
    return third_party


def _with_requirements(distributions: set[str]) -> set[str]:
    """The distributions and everything they require, transitively (as installed here)."""
    normal = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    closure, todo = set(), [normal(d) for d in distributions]
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [normal(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0]) for r in requirements if "extra ==" not in r]
    return closure


def test_job_environment_holds_what_the_rule_scripts_import():
    env = yaml.safe_load((ROOT / "envs" / "torch.yaml").read_text())
    pinned = {re.split(r"[=<>]", line)[0] for dep in env["dependencies"] if isinstance(dep, dict)
              for line in dep["pip"]}
    available = _with_requirements(pinned)
    providers = metadata.packages_distributions()
    missing = {}
    for module in sorted(_third_party_imports_of_jobs()):
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(module, [module])}
        if not dists & available:
            missing[module] = sorted(dists)
    assert not missing, f"envs/torch.yaml lacks what the rule scripts import: {missing}"
    assert (ROOT / "envs" / "torch.post-deploy.sh").exists(), "the library itself must be installed in the env"
