"""Simulated CUDA out-of-memory on the CPU: a module whose forward fails on batches larger than k.

    from oomfixtures import out_of_memory_above

    with out_of_memory_above(adapter.language_model, 2) as oom:   # batch > 2 raises OutOfMemoryError
        ...                                                        # oom.raised: how many were injected
    with out_of_memory_above(adapter.language_model, 0): ...       # every call fails, batch 1 included
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass
class InjectedOOM:
    max_batch: int
    raised: int = 0
    largest_run: int = 0  # largest batch that ran


def _batch_of(args, kwargs) -> int:
    for name in ("inputs_embeds", "input_ids", "pixel_values"):
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return int(tensors[0].shape[0]) if tensors else 1


@contextlib.contextmanager
def out_of_memory_above(module: torch.nn.Module, max_batch: int):
    """Make `module`'s forward raise `torch.OutOfMemoryError` whenever its batch exceeds `max_batch`."""
    state = InjectedOOM(max_batch)

    def hook(_module, args, kwargs):
        batch = _batch_of(args, kwargs)
        if batch > state.max_batch:
            state.raised += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected by the test: batch {batch} > {max_batch})")
        state.largest_run = max(state.largest_run, batch)

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()
