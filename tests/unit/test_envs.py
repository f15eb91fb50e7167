"""The three places that pin versions (requirements.lock, pyproject.toml, envs/*.yaml) agree."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = PIN.match(line)
        if match:
            pins[_normalise(match.group(1))] = match.group(2)
    return pins


def _lock() -> dict[str, str]:
    return _pins((ROOT / "requirements.lock").read_text().splitlines())


def _env_pins(path: Path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    lines = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            lines += dep.get("pip", [])
    return _pins(lines)


def test_pyproject_pins_match_lock():
    quoted = re.findall(r'"([A-Za-z0-9_.\-]+==[^"]+)"', (ROOT / "pyproject.toml").read_text())
    declared = _pins(quoted)
    lock = {**_lock(), **_pins((ROOT / "requirements-bench.lock").read_text().splitlines()),  # + the [bench] extra
            **_pins((ROOT / "requirements-quantization.lock").read_text().splitlines())}  # + [quantization]
    assert declared, "pyproject.toml declares no exact pins"
    mismatches = {name: (ver, lock.get(name)) for name, ver in declared.items()
                  if lock.get(name) != ver}
    assert not mismatches, f"pyproject pin != requirements.lock: {mismatches}"


@pytest.mark.parametrize("env_file", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_conda_env_pins_match_lock(env_file):
    pins = _env_pins(env_file)
    lock = _lock()
    assert pins, f"{env_file.name} pins nothing"
    mismatches = {name: (ver, lock.get(name)) for name, ver in pins.items() if lock.get(name) != ver}
    assert not mismatches, f"{env_file.name} pin != requirements.lock: {mismatches}"


def test_torch_lock_is_the_cpu_release():
    assert _lock()["torch"] == "2.13.0", "keep torch pinned at 2.13.0 (a looser pin pulls CUDA)"


def test_benchmark_peers_never_move_the_main_pins():
    bench = _pins((ROOT / "requirements-bench.lock").read_text().splitlines())
    assert "nnsight" in bench and not set(bench) & set(_lock()), "requirements-bench.lock only adds packages"
