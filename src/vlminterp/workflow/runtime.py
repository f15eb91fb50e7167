"""Process set-up shared by every rule script: logging to the rule's log, threads, seeds.

    from vlminterp.workflow.runtime import rule_context
    with rule_context(snakemake.log[0], threads=snakemake.threads, seed=snakemake.params.seed):
        ...  # library call; logging, warnings and tqdm bars go to the rule's log file

The console (Snakemake's output) gets only warnings, errors and the traceback of a failure; the
progress bars and INFO lines stay in the log (`show-failed-logs` prints it when a job fails).
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Iterator

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA), torch only where it is loaded: a rule that runs
    a model loads it first (`rule_context`'s threads), a cheap rule never imports it."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


PEAK_GPU_MEMORY_MESSAGE = "peak GPU memory: %d bytes allocated (%.2f GiB), %d bytes reserved (%.2f GiB)"


def log_peak_gpu_memory(logger: logging.Logger) -> int | None:
    """Log `torch.cuda.max_memory_allocated()` (and reserved) if this process used CUDA; return it.

    Never initialises CUDA (nor imports torch) just to report: on the CPU it logs nothing."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    logger.info(PEAK_GPU_MEMORY_MESSAGE, allocated, allocated / 2**30, reserved, reserved / 2**30)
    return allocated


@contextlib.contextmanager
def rule_context(log_path: str | os.PathLike, *, threads: int | None = None,
                 seed: int | None = None) -> Iterator[logging.Logger]:
    """Send stderr (progress bars) and `logging` to `log_path`, warnings and errors also to the
    console; set torch threads and seeds, log any failure; the last line reports the peak GPU
    memory when the rule used CUDA (`log_peak_gpu_memory`). `threads`: a rule that runs a model
    (torch is imported, its threads set, then seeded); without it, torch is not imported."""
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as log_file:
        original_stderr = sys.stderr
        sys.stderr = log_file
        console = logging.StreamHandler(original_stderr)
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=log_file, force=True)
        logging.getLogger().addHandler(console)
        logging.captureWarnings(True)
        logger = logging.getLogger("vlminterp.rule")
        started = time.perf_counter()
        logger.info("started (log: %s)", path)
        try:
            if threads is not None:
                import torch

                torch.set_num_threads(max(1, int(threads)))
            if seed is not None:
                seed_everything(int(seed))
            yield logger
            logger.info("finished in %.1f s", time.perf_counter() - started)
        except BaseException:
            log_file.write(traceback.format_exc())
            raise
        finally:
            log_peak_gpu_memory(logger)
            sys.stderr = original_stderr
            logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr, force=True)
