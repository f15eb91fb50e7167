"""Command-line mistakes a newcomer makes, each answered in a line or two before any job (#27):
two --configfile flags, a nested key given to --config, a missing, empty or malformed config
file, and a second Snakemake while one runs (never advising --unlock)."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from snakemake_runner import TINY_CONFIG, snakemake, snakemake_command

pytestmark = pytest.mark.workflow


def _message(proc):
    return proc.stdout + proc.stderr


def test_two_configfile_flags_warn_naming_the_dropped_file_and_the_one_flag_form(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("neo:\n  selection:\n    max_images: 3\n")
    # snakemake_command already passes --configfile tiny.yaml: a second flag follows
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(overlay), check=False)
    message = _message(proc)
    assert "2 --configfile flags" in message, message[-3000:]
    assert f"drops {TINY_CONFIG}" in message
    assert f"--configfile {TINY_CONFIG} {overlay}" in message
    assert not (tmp_path / "results").exists()


def test_one_flag_with_an_overlay_is_the_documented_form(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("neo:\n  selection:\n    max_images: 3\n")
    cmd, env = snakemake_command(tmp_path, "-n", "--cores", "1")
    cmd[cmd.index("--configfile") + 1:cmd.index("--configfile") + 2] = [str(TINY_CONFIG), str(overlay)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, _message(proc)[-3000:]
    assert "--configfile flags" not in _message(proc)


def _bad_files(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "broken.yaml").write_text("run: x\nseed: 0\n  model: [1\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    return tmp_path


@pytest.mark.parametrize("name, expected", [
    ("missing.yaml", "config file {path} not found"),
    ("empty.yaml", "config file {path} is empty"),
    ("broken.yaml", "config file {path}, line 3: not valid YAML"),
    ("list.yaml", "config file {path}: a config is a YAML mapping of keys"),
    ("image.png", "config file {path} is not a text (YAML) file"),
])
def test_a_bad_config_file_is_one_line_naming_the_file(tmp_path, name, expected):
    path = _bad_files(tmp_path) / name
    proc = snakemake(tmp_path, "-n", "--cores", "1", configfile=path, check=False)
    message = _message(proc)
    assert proc.returncode != 0
    assert expected.format(path=path) in message, message[-3000:]
    assert "Traceback" not in message and len(message.strip().splitlines()) == 1, message


def test_a_nested_config_key_says_how_nested_keys_are_given(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--config", "neo.selection.max_images=5", check=False)
    message = _message(proc)
    assert proc.returncode != 0
    assert "Traceback" not in message and "ValueError" not in message, message[-3000:]
    assert "--config sets top-level keys only" in message
    overlay = message[message.index("holding\n") + len("holding\n"):message.index("\nand name it")]
    assert yaml.safe_load(overlay) == {"neo": {"selection": {"max_images": 5}}}


def test_top_level_config_keys_still_work(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--config", "seed=3", check=False)
    assert proc.returncode == 0, _message(proc)[-3000:]


def test_a_second_snakemake_while_one_runs_is_told_so_not_to_unlock(tmp_path):
    """A live Snakemake is simulated the way stale_locks knows one: it holds the directory's
    flock (shared) and its lock files name an output of this run."""
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/tiny/config/effective_config.yaml\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_SH)\n"
         "print('held', flush=True)\ntime.sleep(300)", str(tmp_path / ".snakemake" / "vlminterp-live.flock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = snakemake(tmp_path, "--cores", "1", "results/tiny/config/effective_config.yaml", check=False)
    finally:
        holder.kill()
        holder.wait()
    message = _message(proc)
    assert proc.returncode != 0
    assert "Another Snakemake is running in" in message, message[-3000:]
    assert "Do not use --unlock" in message
    assert "It can be removed with the --unlock argument" not in message
    assert (locks / "0.output.lock").exists(), "the live run's locks were touched"
    assert not (tmp_path / "results").exists()


def test_the_hook_is_installed_in_this_environment():
    from vlminterp.command_line import HOOK_NAME

    import sysconfig
    assert (Path(sysconfig.get_paths()["purelib"]) / HOOK_NAME).exists(), \
        "run `make install` (it writes the snakemake config-file checks hook)"
