"""Prefill throughput and model-FLOPs utilisation (MFU), and decode tokens/s, of the engine.

    python -m benchmarks.prefill_throughput --device cuda --model llava-1.5-7b-random   # GPU, bf16
    python -m benchmarks.prefill_throughput                                             # CPU (no MFU)

Prefill: the paper input (system prompt + 576 image tokens + prompt) through the language model at
batch 1 and batch 16; MFU = model FLOPs (2 x parameters x tokens + causal attention) / time / the
GPU's dense bf16 peak. Decode: 16 rows x 64 greedy tokens through InterventionEngine.generate.
"""
from __future__ import annotations

import torch

from benchmarks.common import engines, finish, gpu_peak_tflops, prefill_flops, start, summarize, time_interleaved


def main(argv=None) -> dict:
    args, bench, ids, pixels = start(__doc__, argv, options={"--batch": 16, "--new-tokens": 64})
    engine, _ = engines(bench)
    with torch.no_grad():
        prepared = engine.prepare(ids, pixels)
        length = prepared.length
        embeds_1 = prepared.inputs_embeds
        embeds_b = embeds_1.expand(args.batch, -1, -1).contiguous()

        def prefill(embeds):
            return lambda: bench.adapter.language_model_forward(embeds, use_cache=False)

        def decode():
            engine.generate(prepared, [None] * args.batch, max_new_tokens=args.new_tokens, eos_token_id=-1)

        prefill(embeds_1)()  # warm-up
        times = time_interleaved(
            {"prefill_batch_1": prefill(embeds_1), f"prefill_batch_{args.batch}": prefill(embeds_b), "decode": decode},
            args.repeats,
            bench.device,
        )
    flops_1 = prefill_flops(bench, length)
    peak = gpu_peak_tflops() if bench.device == "cuda" else None
    achieved = {
        "prefill_batch_1": flops_1 / min(times["prefill_batch_1"]) / 1e12,
        f"prefill_batch_{args.batch}": args.batch * flops_1 / min(times[f"prefill_batch_{args.batch}"]) / 1e12,
    }
    result = {
        "benchmark": "prefill_throughput",
        "sizes": bench.sizes(),
        "sequence_length": length,
        "timing": {name: summarize(t) for name, t in times.items()},
        "prefill_tokens_per_second": {
            "batch_1": length / min(times["prefill_batch_1"]),
            f"batch_{args.batch}": args.batch * length / min(times[f"prefill_batch_{args.batch}"]),
        },
        "decode_tokens_per_second": args.batch * args.new_tokens / min(times["decode"]),
        "prefill_model_tflops_per_second": achieved,
        "gpu_bf16_peak_tflops": peak,
        "prefill_mfu": {k: v / peak for k, v in achieved.items()} if peak else None,
    }
    finish(result, args, "prefill_throughput")
    print(f"prefill {result['prefill_tokens_per_second']}, decode {result['decode_tokens_per_second']:.0f} tok/s, MFU {result['prefill_mfu']}")
    return result


if __name__ == "__main__":
    main()
