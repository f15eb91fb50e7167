"""One loader for every supported model: a hub id (pinned revision) or a local directory.

    from vlminterp.models.loading import ModelSpec, load_model
    spec = ModelSpec("llava-hf/llava-1.5-7b-hf", revision="<40-hex commit>", dtype="fp16", device="cuda")
    model, processor = load_model(spec)     # eval mode; raises WeightsNotAvailableError if not cached offline
    check_model_files(spec)                 # the same error, in a second, before any job (workflow onstart)

The model class and the processor loader come from the adapter registry (`adapter_class_for_config`),
so a new family needs no change here (InternVL / Qwen2-VL: image-only processors where transformers'
video processors would need torchvision). With HF_HUB_OFFLINE=1 (the test default) nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# torch and the adapters (transformers) are imported where a model is loaded: the Snakefile reads
# ModelSpec and check_model_files at every start, and a dry run should not pay for them.

log = logging.getLogger(__name__)

DTYPES: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}   # name -> torch dtype
QUANTIZATIONS = ("none", "4bit")
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
    quantization: "none" | "4bit" (bitsandbytes 4-bit weights with `dtype` as the compute dtype, as
        Neo et al.'s `HookedLVLM(quantize=True, quantize_type="4bit")`; CUDA only, the optional
        extra `vlminterp[quantization]`).
    """

    id_or_path: str
    revision: str | None = None
    dtype: str = "fp32"
    device: Device = "cpu"
    attn_implementation: str = "sdpa"
    quantization: str = "none"

    def __post_init__(self):
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")

    @property
    def is_local(self) -> bool:
        return Path(self.id_or_path).is_dir()

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, DTYPES[self.dtype])

    def quantization_config(self):
        """The `quantization_config` transformers' from_pretrained takes: None, or for "4bit" a
        BitsAndBytesConfig with 4-bit weights and `dtype` as the compute dtype (the authors':
        load_in_4bit, fp16 compute, the library's default quant type)."""
        if self.quantization == "none":
            return None
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=self.torch_dtype)


def _download_hint(spec: ModelSpec, cache_dir: str | Path | None = None) -> str:
    from huggingface_hub import constants

    revision = f" --revision {spec.revision}" if spec.revision else ""
    cache = cache_dir if cache_dir is not None else constants.HF_HUB_CACHE
    cache_option = f" --cache-dir {cache_dir}" if cache_dir is not None else ""
    return (
        f"model {spec.id_or_path!r}{f' at revision {spec.revision}' if spec.revision else ''} is not available "
        f"offline (looked in the Hugging Face cache {cache}). "
        f"Download it first on a machine with internet: `hf download {spec.id_or_path}{revision}{cache_option}` "
        f"(then copy the cache, or set HF_HOME to where it lives), or pass a local model directory."
    )


# What a model directory needs, each as (what, any one of these files).
REQUIRED_FILES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the model config", ("config.json",)),
    ("the weights", ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")),
    ("the tokenizer", ("tokenizer.json", "tokenizer.model", "vocab.json")),
    ("the processor config", ("processor_config.json", "preprocessor_config.json")),
)


def looks_like_path(id_or_path: str) -> bool:
    """True for a model id that names a local directory: absolute, ./ or ../ (or ~), or an existing one.
    Anything else ("org/name") is a hub id."""
    return (id_or_path.startswith(("/", "./", "../", "~")) or id_or_path in (".", "..")
            or Path(id_or_path).is_dir())


def missing_model_files(directory: Path) -> list[str]:
    """What the model directory lacks (empty when complete): one entry per missing part, naming the
    files that would do; shards listed in a weights index but absent are named one by one."""
    missing = [f"{what} ({' or '.join(names)})" for what, names in REQUIRED_FILES
               if not any((directory / name).is_file() for name in names)]
    for index in sorted(directory.glob("*.index.json")):
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing += [f"weight shard {name} (listed in {index.name})" for name in shards
                    if not (directory / name).is_file()]
    return missing


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but at call time (it may be set after import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_model_files(spec: ModelSpec, *, offline: bool | None = None, cache_dir: str | Path | None = None) -> None:
    """Fail fast, without loading anything, when `load_model(spec)` could not find the model's files.

    A local directory (see `looks_like_path`) must exist and hold config, weights, tokenizer and
    processor config (`REQUIRED_FILES`); all that is missing is named in one message. A hub id is
    checked only offline (`offline`, default: HF_HUB_OFFLINE): its revision must be in the Hugging
    Face cache (`cache_dir`, default: huggingface_hub's) with the same files; the message gives the
    exact `hf download` command (huggingface_hub's CLI; `huggingface-cli` is gone since 1.0). Online, rule fetch_model downloads and verifies it before any model job (vlminterp.models.fetch).
    Raises WeightsNotAvailableError."""
    if looks_like_path(spec.id_or_path):
        directory = Path(spec.id_or_path).expanduser()
        if not directory.is_dir():
            raise WeightsNotAvailableError(
                f"model directory {spec.id_or_path!r} (model.pretrained.id) does not exist"
                + (" (it is a file)" if directory.exists() else "")
                + "; give an existing local model directory or a Hugging Face hub id such as llava-hf/llava-1.5-7b-hf"
            )
        missing = missing_model_files(directory)
        if missing:
            raise WeightsNotAvailableError(f"model directory {spec.id_or_path!r} (model.pretrained.id) lacks "
                                           + "; ".join(missing))
        return
    if not (_hub_offline() if offline is None else offline):
        return
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(spec.id_or_path, "config.json", cache_dir=cache_dir, revision=spec.revision)
    if not isinstance(config, str):
        raise WeightsNotAvailableError(_download_hint(spec, cache_dir))
    missing = missing_model_files(Path(config).parent)
    if missing:
        raise WeightsNotAvailableError(f"incomplete download: " + "; ".join(missing) + ". "
                                       + _download_hint(spec, cache_dir))


def _device_placement(spec: ModelSpec) -> dict:
    import torch

    if spec.device == "cpu":
        return {"device_map": None}
    if spec.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("ModelSpec(device='cuda') but no CUDA device is visible")
        return {"device_map": None, "_move_to": "cuda"}
    if importlib.util.find_spec("accelerate") is not None:
        return {"device_map": "auto"}
    return {"device_map": None, "_move_to": "cuda" if torch.cuda.is_available() else None}


def _check_quantization(spec: ModelSpec) -> None:
    """4-bit loading needs CUDA and bitsandbytes: one clear message otherwise."""
    import torch

    if not torch.cuda.is_available() or spec.device == "cpu":
        raise RuntimeError(f"model quantization {spec.quantization!r} needs a CUDA GPU (bitsandbytes); device is "
                           f"{spec.device!r}{'' if torch.cuda.is_available() else ' and no CUDA device is visible'}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(f"model quantization {spec.quantization!r} needs bitsandbytes: "
                           "pip install 'vlminterp[quantization]'")


def load_model(spec: ModelSpec):
    """Load (model, processor) for `spec`; the model is in eval mode on the requested device. Logs the
    time it took and the adapter class (a `loaded model ... in X s, behind <Adapter>` line, which
    benchmarks/gpu_smoke.py and the paper rehearsal read from rule logs)."""
    from transformers import AutoConfig

    from .adapters import adapter_class_for_config

    started = time.perf_counter()
    check_model_files(spec)  # a missing directory or file gets one clear message, not transformers' own
    source_kwargs = {} if spec.is_local else {"revision": spec.revision}
    try:
        config = AutoConfig.from_pretrained(spec.id_or_path, **source_kwargs)
        adapter_class = adapter_class_for_config(config)
        model_class = adapter_class.model_class()
        placement = _device_placement(spec)
        move_to = placement.pop("_move_to", None)
        quantization = spec.quantization_config()
        if quantization is not None:
            _check_quantization(spec)
            placement, move_to = {"device_map": "cuda" if spec.device == "cuda" else "auto",
                                  "quantization_config": quantization}, None  # bitsandbytes places the weights
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
    from vlminterp.models.routing import install_routing

    install_routing(model)  # a planted organism's constraint (config.vlminterp_routing), else nothing
    log.info("loaded model %s (%s, %s) in %.1f s, behind %s", spec.id_or_path,
             spec.dtype if spec.quantization == "none" else f"{spec.dtype}, {spec.quantization}", spec.device,
             time.perf_counter() - started, adapter_class.__name__)
    return model.eval(), processor


def load_adapter(spec: ModelSpec, *, weights: bool = True):
    """The model of `spec` behind its family's adapter (`adapter.model`, `adapter.processor`): the
    one place a stage loads a model. `weights=False` builds the model on the meta device from its
    config and loads only the processor: cheap even for 7B, enough for the prompt format and the
    image-token geometry (map_object_cells), never for a forward pass."""
    import torch

    from .adapters import adapter_class_for_config, adapter_for

    if weights:
        model, processor = load_model(spec)
        return adapter_for(model, processor)
    from transformers import AutoConfig

    source_kwargs = {} if spec.is_local else {"revision": spec.revision}
    config = AutoConfig.from_pretrained(spec.id_or_path, **source_kwargs)
    adapter_class = adapter_class_for_config(config)
    processor = adapter_class.load_processor(spec.id_or_path, **source_kwargs)
    with torch.device("meta"):
        model = adapter_class.model_class()(config)
    return adapter_class(model, processor)
