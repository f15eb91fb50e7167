"""The 16 K2 generation conditions of generation_batched.py (decode-time knockouts), engine vs TransformerLens.

    pip install -e .[bench]
    python -m benchmarks.peers_generation --new-tokens 32          # real-geometry random model, CPU

Sides (one process, interleaved rounds, generated tokens checked identical; EOS off):
  engine      InterventionEngine.generate: 16 rows in one batch, prefix shared in place (sdpa)
  tl_bridge   TransformerLens 4's TransformerBridge (peers_knockout.boot_bridge): one greedy
              `generate` (its KV cache on) per condition under `hooks(fwd_hooks=...)`, the knockout
              on `hook_attn_scores` for every query whose sequence slot the condition names
              (prefill rows and each decode step alike).
nnsight is not here: its decode-time edits need one `.source` edit per layer per generated step
(`tracer.iter`), which this branch did not write.
"""
from __future__ import annotations

import statistics
import sys

import torch
import transformers

from benchmarks.common import finish, start, summarize, time_interleaved
from benchmarks.generation_batched import NO_EOS, k2_conditions
from benchmarks.peers_knockout import boot_bridge
from vlminterp.interventions import From, InterventionEngine, as_condition
from vlminterp.interventions.knockout import explicit_positions


def knockout_hooks(condition, n_layers: int) -> list:
    """`hook_attn_scores` hooks blocking each query slot the (single-knockout) condition names."""
    hooks = []
    for knockout in as_condition(condition).knockouts:
        start = knockout.query_positions.start if isinstance(knockout.query_positions, From) else None
        explicit = set(explicit_positions(knockout.query_positions).tolist())
        keys = explicit_positions(knockout.key_positions)

        def block(scores, hook, start=start, explicit=explicit, keys=keys):
            queries, num_keys = scores.shape[-2], scores.shape[-1]
            for row in range(queries):
                slot = num_keys - queries + row  # queries are the last slots of the cache
                if slot in explicit or (start is not None and slot >= start):
                    scores[:, :, row, keys[keys < num_keys]] = float("-inf")
            return scores

        layers = range(n_layers) if knockout.layers is None else knockout.layers
        hooks += [(f"blocks.{layer}.attn.hook_attn_scores", block) for layer in layers]
    return hooks


def main(argv=None) -> dict:
    transformers.logging.set_verbosity_error()
    argv = list(sys.argv[1:] if argv is None else argv) + ["--attn", "eager"]  # the bridge runs eager anyway
    args, bench, ids, pixels = start(__doc__, argv, options={"--new-tokens": 32})
    conditions, labels = k2_conditions(bench.adapter, ids)
    engine = InterventionEngine(bench.model, bench.adapter)
    bridge = boot_bridge(bench)
    length, new_tokens = ids.shape[1], args.new_tokens
    outputs: dict[str, list[list[int]]] = {}

    def engine_side():
        bench.model.set_attn_implementation("sdpa")  # as the experiments run it
        try:
            outputs["engine"] = engine.generate(
                engine.prepare(ids, pixels), conditions, max_new_tokens=new_tokens, eos_token_id=NO_EOS
            ).tokens
        finally:
            bench.model.set_attn_implementation("eager")

    def bridge_generation(condition) -> list[int]:
        with bridge.hooks(fwd_hooks=knockout_hooks(condition, bench.adapter.n_layers)):
            out = bridge.generate(ids, max_new_tokens=new_tokens, stop_at_eos=False, do_sample=False,
                                  pixel_values=pixels, verbose=False, return_type="tokens")
        return out[0, length:].tolist()

    def bridge_side():
        outputs["tl_bridge"] = [bridge_generation(c) for c in conditions]

    sides = {"engine": engine_side, "tl_bridge": bridge_side}
    with torch.no_grad():
        for run in sides.values():
            run()  # warm-up outside the timing
        times = time_interleaved(sides, args.repeats, bench.device)
    ratios = [b / e for b, e in zip(times["tl_bridge"], times["engine"])]
    identical = outputs["engine"] == outputs["tl_bridge"]
    result = {
        "benchmark": "peers_generation",
        "description": f"{len(conditions)} K2 generation conditions x {new_tokens} tokens: engine vs TransformerBridge",
        "peers": {"transformer-lens": __import__("importlib.metadata").metadata.version("transformer-lens")},
        "sizes": bench.sizes(),
        "sequence_length": length,
        "conditions": len(conditions),
        "condition_labels": labels,
        "new_tokens_per_condition": new_tokens,
        "timing": {name: summarize(t) for name, t in times.items()},
        "ratios_within_rounds": {"tl_bridge/engine": ratios},
        "ratio_median": {"tl_bridge/engine": statistics.median(ratios)},
        "equality": {
            "identical_generations": identical,
            "differing_conditions": [l for l, a, b in zip(labels, outputs["engine"], outputs["tl_bridge"]) if a != b],
            "distinct_generations": len({tuple(t) for t in outputs["engine"]}),
        },
    }
    finish(result, args, "peers_generation")
    print(f"tl_bridge/engine = {result['ratio_median']['tl_bridge/engine']:.1f}x, identical = {identical}, "
          f"{result['equality']['distinct_generations']} distinct generations")
    return result


if __name__ == "__main__":
    main()
