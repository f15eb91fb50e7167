"""Fixtures for the unit tests: cached random-weight VLMs (LLaVA, InternVL, Qwen2-VL) and ready-made inputs."""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from helpers import encode, random_image

from vlminterp.models.adapters import adapter_for
from vlminterp.testing.synthetic import build_synthetic

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the thread pool
# oversubscribes badly (measured: test_engine.py 47 s with the default pool, 3 s with one thread).
torch.set_num_threads(1)


@lru_cache(maxsize=None)
def _cached(variant: str, attn_implementation: str):
    model, processor = build_synthetic(variant, seed=0, attn_implementation=attn_implementation)
    return model, processor, adapter_for(model, processor)


@pytest.fixture(scope="session")
def synthetic():
    """synthetic(variant, attn="sdpa") -> (model, processor, adapter); built once per session."""
    return lambda variant, attn="sdpa": _cached(variant, attn)


@pytest.fixture(scope="session", name="random_image")
def random_image_fixture():
    """random_image(seed, size=(w, h)) -> a PIL image of uniform noise."""
    return random_image


@pytest.fixture(scope="session")
def make_inputs():
    return encode


@pytest.fixture
def no_grad():
    with torch.no_grad():
        yield
