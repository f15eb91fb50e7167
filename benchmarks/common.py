"""Shared benchmark plumbing: arguments, model selection, the paper's input, timing, JSON output.

    args, bench, ids, pixels = start(__doc__, argv, options={"--new-tokens": 64})   # parse, load, encode
    engine, one_at_a_time = engines(bench)     # batched + prefix-shared, and both tricks off
    ...
    finish(result, args, "my_benchmark", ratio="ratio_naive_over_fast")   # target_met, environment, JSON

--model accepts a synthetic variant name (e.g. "real-geometry"), "llava-1.5-7b-random" (LLaVA-1.5-7B
sizes, random weights, for GPU runs), "llava-1.5-7b-narrow" (its per-row geometry, 2 heads: CPU memory
checks), or a local model directory (e.g. the organism) / hub id.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from vlminterp.interventions import InterventionEngine  # noqa: E402
from vlminterp.io import write_json  # noqa: E402
from vlminterp.models.adapters import LLAVA_SYSTEM_PROMPT, adapter_for  # noqa: E402
from vlminterp.models.loading import ModelSpec, load_model  # noqa: E402
from vlminterp.testing.synthetic import (  # noqa: E402
    SYNTHETIC_VARIANTS,
    build_model_from_config,
    build_processor,
    build_synthetic,
    llava_1_5_7b_config,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FULL_7B = "llava-1.5-7b-random"
# LLaVA-1.5-7B's per-row geometry on a CPU budget: 32 layers, head_dim 128, its vocabulary, 576 image
# tokens, but 2 heads (width 256) and a 1-layer vision tower: memory per row relative to its own KV
# (attention rows vs keys/values) is that of the 7B, the weights are ~0.1 GB.
NARROW_7B = "llava-1.5-7b-narrow"
DESCRIBE = " describe the image"  # Kaduri et al.'s prompt text, with the long system prompt
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="real-geometry", help="synthetic variant, llava-1.5-7b-random, or model dir")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each side (interleaved)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads on CPU (default 1: the shared 2-core machine oversubscribes otherwise)",
    )
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/<name>[_<model>].json)")
    return parser


@dataclass
class Bench:
    model: torch.nn.Module
    processor: object
    adapter: object
    name: str
    device: str
    dtype: torch.dtype

    def sizes(self) -> dict:
        text = self.adapter.text_config
        return {
            "model": self.name,
            "text_layers": text.num_hidden_layers,
            "hidden_size": text.hidden_size,
            "heads": text.num_attention_heads,
            "kv_heads": self.adapter.n_kv_heads,
            "vocab": text.vocab_size,
            "grid": f"{self.adapter.grid.rows}x{self.adapter.grid.cols}",
            "image_tokens": self.adapter.grid.num_cells,
            "lm_parameters": sum(p.numel() for p in self.adapter.language_model.parameters())
            + self.adapter.lm_head.weight.numel(),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": self.device,
        }


def load_bench_model(args) -> Bench:
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    if args.model in SYNTHETIC_VARIANTS:
        model, processor = build_synthetic(args.model, attn_implementation=args.attn, dtype=dtype, device=args.device)
    elif args.model in (FULL_7B, NARROW_7B):
        config = llava_1_5_7b_config() if args.model == FULL_7B else narrow_7b_config()
        model = build_model_from_config(config, dtype=dtype, device=args.device, attn_implementation=args.attn)
        processor = build_processor(SYNTHETIC_VARIANTS["real-geometry"])  # same 336 px / 14 px geometry
    else:
        dtype_name = {v: k for k, v in DTYPES.items()}[dtype]
        model, processor = load_model(
            ModelSpec(args.model, dtype=dtype_name, device=args.device, attn_implementation=args.attn)
        )
    return Bench(model, processor, adapter_for(model, processor), args.model, args.device, dtype)


def narrow_7b_config():
    """NARROW_7B: LLaVA-1.5-7B's config with 2 heads of 128 (width 256) and a 1-layer, 64-wide vision tower."""
    config = llava_1_5_7b_config()
    text, vision = config.text_config, config.vision_config
    text.hidden_size, text.intermediate_size, text.head_dim = 256, 688, 128
    text.num_attention_heads = text.num_key_value_heads = 2
    vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.num_attention_heads = 64, 128, 1, 2
    return config


def start(doc: str, argv=None, *, options: dict[str, int] | None = None):
    """Parse the common arguments (plus integer `options`, e.g. {"--new-tokens": 64}), load the model
    and encode the paper's input: (args, bench, input_ids, pixel_values)."""
    mark_start()
    parser = base_parser(doc.strip().splitlines()[0])
    for flag, default in (options or {}).items():
        parser.add_argument(flag, type=int, default=default)
    args = parser.parse_args(argv)
    bench = load_bench_model(args)
    inputs = paper_inputs(bench)
    return args, bench, inputs["input_ids"], inputs["pixel_values"]


def engines(bench: Bench) -> tuple[InterventionEngine, InterventionEngine]:
    """The engine as the experiments run it, and the same engine with prefix sharing and batching off."""
    return (InterventionEngine(bench.model, bench.adapter),
            InterventionEngine(bench.model, bench.adapter, share_prefix=False, max_batch_size=1))


def paper_inputs(bench: Bench, seed: int = 0, size: tuple[int, int] = (500, 375)) -> dict:
    """Kaduri et al.'s long system prompt + ' describe the image' on one (random) COCO-sized image."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    prompt = bench.adapter.format_prompt(DESCRIBE, system_prompt=LLAVA_SYSTEM_PROMPT)
    enc = bench.processor(images=image, text=prompt, return_tensors="pt")
    input_ids = enc["input_ids"]
    processor_image_id = bench.processor.tokenizer.convert_tokens_to_ids(bench.processor.image_token)
    if processor_image_id != bench.adapter.image_token_id:  # the 7B-size random model: remap the id
        input_ids = torch.where(input_ids == processor_image_id, bench.adapter.image_token_id, input_ids)
    return {
        "input_ids": input_ids.to(bench.device),
        "pixel_values": enc["pixel_values"].to(bench.device, bench.dtype),
    }


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(functions: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, list[float]]:
    """Run each function `repeats` times, interleaved (A B A B ...) so load changes hit both sides."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times: list[float]) -> dict:
    return {"seconds_min": min(times), "seconds_median": statistics.median(times), "seconds_all": times}


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15-minute load averages (None where the OS keeps none)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


_started = {"load_average": load_average(), "wall": time.perf_counter(), "cpu": time.process_time()}


def mark_start() -> None:
    """Record the load average and clocks now as the benchmark's start (start() does; environment()
    reports them)."""
    _started.update(load_average=load_average(), wall=time.perf_counter(), cpu=time.process_time())


def environment() -> dict:
    """Versions, threads, the load average (1, 5, 15 min) at the benchmark's start and now (its end), and
    the seconds in between: times taken on a loaded machine are noisy (memory numbers are not)."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_start": _started["load_average"],
        "load_average_end": load_average(),
        "seconds_since_start": round(time.perf_counter() - _started["wall"], 1),
        "cpu_seconds_since_start": round(time.process_time() - _started["cpu"], 1),  # this process only
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    import transformers

    info["transformers"] = transformers.__version__
    return info


def output_path(args, name: str) -> Path:
    if args.out:
        return Path(args.out)
    suffix = "" if args.model == "real-geometry" and args.device == "cpu" else f"_{Path(args.model).name}_{args.device}"
    return RESULTS_DIR / f"{name}{suffix}.json"


def save(result: dict, path: Path) -> None:
    write_json(result, path)
    print(f"wrote {path}")


def finish(result: dict, args, name: str, ratio: str | None = None) -> dict:
    """Add the environment (and `target_met`: result[ratio] >= result["target_ratio"]), write the JSON."""
    result["environment"] = environment()
    if ratio is not None:
        result["target_met"] = result[ratio] >= result["target_ratio"]
    save(result, output_path(args, name))
    return result


# Dense bf16 tensor-core peak (TFLOP/s) of the GPUs this project may get, for MFU.
GPU_BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def gpu_peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, peak in GPU_BF16_PEAK_TFLOPS.items():
        if key in name:
            return peak
    return None


def prefill_flops(bench: Bench, length: int) -> float:
    """Model FLOPs of one prefill of `length` tokens through the language model (2 per MAC)."""
    text = bench.adapter.text_config
    params = sum(p.numel() for p in bench.adapter.language_model.parameters()) - bench.adapter.embed_tokens.weight.numel()
    dense = 2 * params * length + 2 * bench.adapter.lm_head.weight.numel()  # logits of the last token only
    attention = 2 * 2 * text.num_hidden_layers * text.hidden_size * length * (length + 1) / 2  # QK^T and PV, causal
    return float(dense + attention)
