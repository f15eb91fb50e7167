"""Run every engine benchmark with the same arguments and write benchmarks/results/*.json.

    python -m benchmarks.run_all                                   # CPU, real-geometry random model
    python -m benchmarks.run_all --model path/to/organism          # the organism (target >= 10x)
    python -m benchmarks.run_all --device cuda --model llava-1.5-7b-random --dtype bf16

Each benchmark is also runnable alone (python -m benchmarks.<name>); the peers benchmark
(benchmarks.peers_knockout: nnsight, TransformerLens) needs `pip install -e .[bench]` and runs
alone. Arguments other than those below are passed through to every benchmark (--model,
--device, --dtype, --attn, --repeats, --threads).
"""
from __future__ import annotations

import sys

from benchmarks import generation_batched, knockout_last_token, memory_prefix, prefill_throughput, streaming_mean
from benchmarks.common import RESULTS_DIR, save

BENCHMARKS = {
    "knockout_last_token": knockout_last_token.main,
    "generation_batched": generation_batched.main,
    "streaming_mean": streaming_mean.main,
    "memory_prefix": memory_prefix.main,
    "prefill_throughput": prefill_throughput.main,
}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" in argv:
        raise SystemExit("run_all writes one file per benchmark; run a benchmark alone to choose --out")
    summary = {}
    for name, run in BENCHMARKS.items():
        print(f"== {name}")
        result = run(argv)
        summary[name] = {
            key: result.get(key)
            for key in (
                "ratio_naive_over_fast",
                "ratio_sequential_over_fast",
                "ratio_sequential_over_batched",
                "ratio_sequential_engine_over_batched",
                "target_ratio",
                "target_met",
                "equality",
                "independent_of_N",
                "streaming_equals_naive_mean",
                "prefill_mfu",
                "decode_tokens_per_second",
                "estimate_llava_1_5_7b_bf16",
            )
            if key in result
        }
        summary[name]["sizes"] = result.get("sizes")
    model = next((argv[i + 1] for i, a in enumerate(argv) if a == "--model"), "real-geometry")
    device = next((argv[i + 1] for i, a in enumerate(argv) if a == "--device"), "cpu")
    suffix = "" if (model, device) == ("real-geometry", "cpu") else f"_{model.rstrip('/').split('/')[-1]}_{device}"
    save(summary, RESULTS_DIR / f"summary{suffix}.json")
    return summary


if __name__ == "__main__":
    main()
