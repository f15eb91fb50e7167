"""16 generation conditions x 64 new tokens (Kaduri et al. K2 style): batched / sequential time ratio.

    python -m benchmarks.generation_batched
    python -m benchmarks.generation_batched --model path/to/organism --new-tokens 64

Conditions (image = the image positions, T = prompt length, L = layers): clean; image -> generated
(decode steps only); image -> query (prefill); image -> query + generated; generated tokens see the
image only in 4 layer windows; image -> generated from layer l onward for 8 values of l.
Sides, timed interleaved: batched = InterventionEngine.generate (one batch of 16 rows, shared
prefix); sequential = reference_generate (one `model.generate` with KV cache per condition, what
the original code did); sequential_engine = the engine with sharing and batching off (same
attention path as batched, one condition at a time: isolates what batching buys).
EOS is disabled so every row decodes exactly --new-tokens tokens. Token equality is checked.
"""
from __future__ import annotations

import numpy as np
import torch
import transformers

from benchmarks.common import engines, finish, start, summarize, time_interleaved
from vlminterp.interventions import From, Knockout, reference_generate

NO_EOS = -1  # an id never produced: every row runs to max_new_tokens


def k2_conditions(adapter, input_ids) -> tuple[list, list[str]]:
    length = input_ids.shape[1]
    n_layers = adapter.n_layers
    image = adapter.image_positions(input_ids)[0].tolist()
    after_image = image[-1] + 1
    conditions = [None, Knockout(From(length), image), Knockout(range(after_image, length), image),
                  Knockout(From(after_image), image)]
    labels = ["clean", "image->generated", "image->query", "image->query+generated"]
    quarter = max(1, n_layers // 4)
    for start in np.linspace(0, n_layers - quarter, 4).round().astype(int).tolist():
        visible = set(range(start, start + quarter))
        conditions.append(Knockout(From(length), image, layers=[l for l in range(n_layers) if l not in visible]))
        labels.append(f"image visible to generated only in layers {start}-{start + quarter - 1}")
    for first in np.linspace(0, n_layers - 1, 8).round().astype(int).tolist():
        conditions.append(Knockout(From(length), image, layers=range(first, n_layers)))
        labels.append(f"image->generated from layer {first}")
    return conditions, labels


def main(argv=None) -> dict:
    transformers.logging.set_verbosity_error()  # generate() warns about the never-produced EOS id
    args, bench, ids, pixels = start(__doc__, argv, options={"--new-tokens": 64})
    conditions, labels = k2_conditions(bench.adapter, ids)
    engine, one_at_a_time = engines(bench)
    outputs: dict[str, list[list[int]]] = {}

    def batched():
        outputs["batched"] = engine.generate(
            engine.prepare(ids, pixels), conditions, max_new_tokens=args.new_tokens, eos_token_id=NO_EOS
        ).tokens

    def sequential():
        outputs["sequential"] = [
            reference_generate(bench.model, bench.adapter, ids, pixels, c, args.new_tokens, eos_token_id=NO_EOS)
            for c in conditions
        ]

    def sequential_engine():
        outputs["sequential_engine"] = one_at_a_time.generate(
            one_at_a_time.prepare(ids, pixels), conditions, max_new_tokens=args.new_tokens, eos_token_id=NO_EOS
        ).tokens

    with torch.no_grad():
        engine.generate(engine.prepare(ids, pixels), conditions[:2], max_new_tokens=2, eos_token_id=NO_EOS)  # warm-up
        times = time_interleaved(
            {"batched": batched, "sequential": sequential, "sequential_engine": sequential_engine},
            args.repeats,
            bench.device,
        )
    identical = outputs["batched"] == outputs["sequential"] == outputs["sequential_engine"]
    differing_rows = [labels[i] for i, (a, b) in enumerate(zip(outputs["batched"], outputs["sequential"])) if a != b]
    new_tokens_total = sum(len(t) for t in outputs["batched"])
    result = {
        "benchmark": "generation_batched",
        "description": f"{len(conditions)} generation conditions x {args.new_tokens} new tokens: batched vs sequential",
        "sizes": bench.sizes(),
        "sequence_length": ids.shape[1],
        "conditions": len(conditions),
        "condition_labels": labels,
        "new_tokens_per_condition": args.new_tokens,
        "timing": {name: summarize(t) for name, t in times.items()},
        "ratio_sequential_over_batched": min(times["sequential"]) / min(times["batched"]),
        "ratio_sequential_over_batched_median": float(np.median(times["sequential"]) / np.median(times["batched"])),
        "ratio_sequential_engine_over_batched": min(times["sequential_engine"]) / min(times["batched"]),
        "tokens_per_second": {
            "batched": new_tokens_total / min(times["batched"]),
            "sequential": new_tokens_total / min(times["sequential"]),
            "sequential_engine": new_tokens_total / min(times["sequential_engine"]),
        },
        "target_ratio": 4.0,
        "equality": {
            "identical_generations": identical,
            "differing_conditions": differing_rows,
            "distinct_generations": len({tuple(t) for t in outputs["batched"]}),
        },
    }
    finish(result, args, "generation_batched", ratio="ratio_sequential_over_batched")
    print(
        f"sequential/batched = {result['ratio_sequential_over_batched']:.1f}x (target 4x), "
        f"sequential_engine/batched = {result['ratio_sequential_engine_over_batched']:.1f}x, identical = {identical}, "
        f"{result['tokens_per_second']['batched']:.0f} tok/s batched"
    )
    return result


if __name__ == "__main__":
    main()
