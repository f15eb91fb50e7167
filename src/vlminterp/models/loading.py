"""One loader for every supported model: a hub id (pinned revision) or a local directory.

    from vlminterp.models.loading import ModelSpec, load_model
    spec = ModelSpec("llava-hf/llava-1.5-7b-hf", revision="<40-hex commit>", dtype="fp16", device="cuda")
    model, processor = load_model(spec)     # eval mode; raises WeightsNotAvailableError if not cached offline

The model class and the processor loader come from the adapter registry (`adapter_class_for_config`),
so a new family needs no change here (InternVL / Qwen2-VL: image-only processors where transformers'
video processors would need torchvision). With HF_HUB_OFFLINE=1 (the test default) nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .adapters import adapter_class_for_config

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
Device = Literal["cpu", "cuda", "auto"]


class WeightsNotAvailableError(RuntimeError):
    """The model's files are neither a local directory nor in the Hugging Face cache (offline)."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how.

    id_or_path: hub id ("llava-hf/llava-1.5-7b-hf") or a local model directory.
    revision: a pinned commit hash (or tag) for hub ids; ignored for local directories.
    dtype: "fp32" | "fp16" | "bf16".
    device: "cpu" | "cuda" | "auto" (device_map="auto" when accelerate is installed, else the GPU if any).
    attn_implementation: "sdpa" | "eager" (the knockout engine supports these two).
    """

    id_or_path: str
    revision: str | None = None
    dtype: str = "fp32"
    device: Device = "cpu"
    attn_implementation: str = "sdpa"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")

    @property
    def is_local(self) -> bool:
        return Path(self.id_or_path).is_dir()

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def _download_hint(spec: ModelSpec) -> str:
    revision = f" --revision {spec.revision}" if spec.revision else ""
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (
        f"model {spec.id_or_path!r} is not available offline (looked in the Hugging Face cache under {cache}). "
        f"Download it first on a machine with internet: `huggingface-cli download {spec.id_or_path}{revision}` "
        f"(then copy the cache, or set HF_HOME to where it lives), or pass a local model directory."
    )


def _device_placement(spec: ModelSpec) -> dict:
    if spec.device == "cpu":
        return {"device_map": None}
    if spec.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("ModelSpec(device='cuda') but no CUDA device is visible")
        return {"device_map": None, "_move_to": "cuda"}
    if importlib.util.find_spec("accelerate") is not None:
        return {"device_map": "auto"}
    return {"device_map": None, "_move_to": "cuda" if torch.cuda.is_available() else None}


def load_model(spec: ModelSpec):
    """Load (model, processor) for `spec`; the model is in eval mode on the requested device. Logs the
    time it took (a `loaded model ... in X s` line, which benchmarks/gpu_smoke.py reads from rule logs)."""
    from transformers import AutoConfig

    started = time.perf_counter()
    source_kwargs = {} if spec.is_local else {"revision": spec.revision}
    try:
        config = AutoConfig.from_pretrained(spec.id_or_path, **source_kwargs)
        adapter_class = adapter_class_for_config(config)
        model_class = adapter_class.model_class()
        placement = _device_placement(spec)
        move_to = placement.pop("_move_to", None)
        model = model_class.from_pretrained(
            spec.id_or_path,
            config=config,
            dtype=spec.torch_dtype,
            attn_implementation=spec.attn_implementation,
            **placement,
            **source_kwargs,
        )
        processor = adapter_class.load_processor(spec.id_or_path, **source_kwargs)
    except OSError as error:  # what transformers raises for missing files / offline cache misses
        if spec.is_local and Path(spec.id_or_path, "config.json").exists():
            raise WeightsNotAvailableError(f"incomplete model directory {spec.id_or_path!r}: {error}") from None
        raise WeightsNotAvailableError(_download_hint(spec)) from None
    if move_to is not None:
        model = model.to(move_to)
    log.info("loaded model %s (%s, %s) in %.1f s", spec.id_or_path, spec.dtype, spec.device,
             time.perf_counter() - started)
    return model.eval(), processor
