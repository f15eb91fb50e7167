"""A rule's progress bars and INFO lines go to its log only; warnings and errors also reach the
console (Snakemake's output), once each."""
from __future__ import annotations

import logging

import pytest
from tqdm.auto import tqdm

from vlminterp.workflow.runtime import rule_context


def test_progress_stays_in_the_log_and_warnings_reach_the_console(tmp_path, capfd):
    log = tmp_path / "rule.log"
    with rule_context(log) as logger:
        for _ in tqdm(range(50), desc="training", mininterval=0):
            pass
        logger.info("image 1/1")
        logging.getLogger("vlminterp.somewhere").warning("batch halved")
    console = capfd.readouterr().err
    text = log.read_text()
    assert "training" in text and "image 1/1" in text and "batch halved" in text
    assert "training" not in console and "image 1/1" not in console
    assert console.count("batch halved") == 1


def test_a_failure_is_logged_and_reaches_the_console(tmp_path, capfd):
    log = tmp_path / "rule.log"
    with pytest.raises(ValueError):
        with rule_context(log) as logger:
            logger.error("cannot go on")
            raise ValueError("bad input: image 7")
    assert "bad input: image 7" in log.read_text()
    assert "cannot go on" in capfd.readouterr().err
