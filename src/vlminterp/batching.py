"""CUDA out-of-memory in a batched stage: halve the batch, redo the same work, and record it.

    batches = AdaptiveBatch(64, stage="N1 token ablation")
    for result in batches.iterate(conditions, run_chunk):   # run_chunk(list of <= batches.size items)
        ...                                                 # one result per chunk, in item order
    batches.size, batches.retries                           # size in effect now, OOM retries so far
    mark = batches.retries; ...; row.update(batches.columns(since=mark))   # batch_size, oom_retries

A chunk that raises `torch.OutOfMemoryError` (torch.cuda.OutOfMemoryError) is dropped, the CUDA
cache is emptied and the same items run again in chunks of half the failed chunk's length; the
smaller size stays for the rest of the stage (every later call would fail the same way). Each
item's result depends on the item alone (the engine's rows are per condition), so the results do
not depend on the size that ends up used, up to the floating-point rounding of batched kernels
(the tests: same tokens, answers and decisions; probabilities within 1e-5). A chunk of one item
that still runs out of memory (or work that runs at batch size 1 anyway, `single`) raises
`BatchOutOfMemoryError`, naming the stage and the configured batch size.

Recording: stage tables carry BATCH_COLUMNS per row, `batch_size` = the most items per batch in
effect when the row's image (or task) was done (the configured size unless an OOM halved it) and
`oom_retries` = how many times that image's (task's) work was halved; each retry is also logged
at WARNING level.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Columns a batched stage adds to its table (module docstring).
BATCH_COLUMNS: tuple[str, ...] = ("batch_size", "oom_retries")


class BatchOutOfMemoryError(RuntimeError):
    """Out of memory with one item per batch: nothing smaller is left to try."""


def free_cuda_cache() -> None:
    """Return cached CUDA blocks to the allocator (no-op without CUDA)."""
    import torch  # here, not at the top: the tables' modules import BATCH_COLUMNS without torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class AdaptiveBatch:
    """A batch size that halves on CUDA out-of-memory, with the count of retries it took."""

    def __init__(self, size: int, stage: str = "batched stage"):
        if int(size) < 1:
            raise ValueError(f"{stage}: batch size must be >= 1, got {size}")
        self.requested = int(size)
        self.size = int(size)
        self.stage = stage
        self.retries = 0

    def iterate(self, items: Sequence[Item], work: Callable[[list[Item]], Result],
                limit: int | None = None) -> Iterator[Result]:
        """`work` on consecutive chunks of at most `size` items (and at most `limit`, when given),
        yielding each chunk's result in order; a chunk that runs out of CUDA memory runs again in
        halves (module docstring)."""
        import torch

        items = list(items)
        start = 0
        while start < len(items):
            chunk = items[start:start + (self.size if limit is None else min(self.size, limit))]
            out_of_memory = False
            try:
                result = work(chunk)
            except torch.OutOfMemoryError as error:
                if len(chunk) <= 1:
                    raise self._too_large("one item at a time") from error
                out_of_memory = True
            if out_of_memory:  # outside the except block: the failed chunk's tensors are released
                self._halve(len(chunk))
                continue
            yield result
            start += len(chunk)

    def single(self, work: Callable[[], Result], what: str) -> Result:
        """`work` that runs at batch size 1 whatever the size (e.g. a prefix shared by every item):
        out of memory there raises `BatchOutOfMemoryError` at once, since halving cannot help."""
        import torch

        try:
            return work()
        except torch.OutOfMemoryError as error:
            raise self._too_large(what) from error

    def map(self, items: Sequence[Item], work: Callable[[list[Item]], Result],
            limit: int | None = None) -> list[Result]:
        """The chunk results of `iterate`, as a list."""
        return list(self.iterate(items, work, limit))

    def columns(self, since: int = 0) -> dict[str, int]:
        """BATCH_COLUMNS now: the size in effect and the retries since the retry count `since`."""
        return {"batch_size": self.size, "oom_retries": self.retries - since}

    def _too_large(self, what: str) -> BatchOutOfMemoryError:
        free_cuda_cache()
        return BatchOutOfMemoryError(
            f"{self.stage}: CUDA out of memory at batch size 1 ({what}; configured batch size {self.requested}, "
            f"{self.retries} OOM retries before): the work does not fit this device even at batch size 1")

    def _halve(self, failed: int) -> None:
        free_cuda_cache()
        self.size = max(1, failed // 2)
        self.retries += 1
        log.warning("%s: CUDA out of memory at batch size %d; retrying the same work at batch size %d "
                    "(OOM retry %d, configured batch size %d)", self.stage, failed, self.size, self.retries,
                    self.requested)


F = TypeVar("F", bound=Callable)


def no_grad(function: F) -> F:
    """`@torch.no_grad()` that imports torch when `function` runs, not when its module is imported
    (a module whose tables cheap rules read stays importable without torch)."""
    @functools.wraps(function)
    def without_gradients(*args, **kwargs):
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)

    return without_gradients
