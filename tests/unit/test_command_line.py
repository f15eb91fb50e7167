"""vlminterp.command_line: how a Snakemake command line's config files and --config entries are read."""
from __future__ import annotations

from vlminterp.command_line import (config_entries, configfile_flags, nested_config_problem,
                                    two_configfile_flags)


def test_configfile_flags_in_every_spelling():
    argv = ["snakemake", "--cores", "1", "--configfile", "a.yaml", "b.yaml", "-n", "--configfile=c.yaml",
            "--configfiles", "d.yaml", "results/x.png"]
    assert configfile_flags(argv) == [["a.yaml", "b.yaml"], ["c.yaml"], ["d.yaml", "results/x.png"]]
    warning = two_configfile_flags(argv)
    assert "3 --configfile flags" in warning and "drops a.yaml b.yaml c.yaml" in warning
    assert two_configfile_flags(["snakemake", "--configfile", "a.yaml", "b.yaml"]) is None


def test_config_entries_and_nested_keys():
    argv = ["snakemake", "--config", "seed=1", "neo.selection.max_images=5", "-n", "-C", "device=cpu"]
    assert config_entries(argv) == ["seed=1", "neo.selection.max_images=5", "device=cpu"]
    assert nested_config_problem("seed=1") is None
    message = nested_config_problem("neo.selection.max_images=5")
    assert "neo:\n  selection:\n    max_images: 5" in message
