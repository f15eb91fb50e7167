"""The 16 K2 generation conditions of generation_batched.py (decode-time knockouts): engine vs peers.

    pip install -e .[bench]
    python -m benchmarks.peers_generation --new-tokens 32          # real-geometry random model, CPU

Sides (one process, interleaved rounds, generated tokens checked identical; EOS off):
  engine      InterventionEngine.generate: 16 rows in one batch, prefix shared in place (sdpa)
  tl_bridge   TransformerLens 4's TransformerBridge (peers_knockout.boot_bridge): one greedy
              `generate` (its KV cache on) per condition under `hooks(fwd_hooks=...)`, the knockout
              on `hook_attn_scores` for every query whose sequence slot the condition names
              (prefill rows and each decode step alike).
  nnsight     nnsight 0.8.1 as documented for generation: one `generate` trace per condition
              (invokes with pixel_values do not batch), `tracer.iter[:new_tokens]` over the steps,
              each knocked layer's additive mask edited through `.source` (eager).
"""
from __future__ import annotations

import importlib.metadata
import statistics
import sys

import torch
import transformers

from benchmarks.common import finish, start, summarize, time_interleaved
from benchmarks.generation_batched import NO_EOS, k2_conditions
from benchmarks.peers_knockout import boot_bridge
from vlminterp.interventions import From, InterventionEngine, as_condition
from vlminterp.interventions.positions import explicit_positions


def knocked_rows(knockout, num_queries: int, num_keys: int):
    """(query row, key positions) pairs a knockout blocks in one attention call (queries = last slots)."""
    start = knockout.query_positions.start if isinstance(knockout.query_positions, From) else None
    explicit = set(explicit_positions(knockout.query_positions).tolist())
    keys = explicit_positions(knockout.key_positions)
    keys = keys[keys < num_keys]
    for row in range(num_queries):
        slot = num_keys - num_queries + row
        if slot in explicit or (start is not None and slot >= start):
            yield row, keys


def knockouts_at(condition, layer: int) -> list:
    return [k for k in as_condition(condition).knockouts if k.layers is None or layer in k.layers]


def knockout_hooks(condition, n_layers: int) -> list:
    """TransformerBridge: `hook_attn_scores` hooks setting the blocked scores to -inf."""

    def make_hook(knockouts):
        def block(scores, hook):
            for knockout in knockouts:
                for row, keys in knocked_rows(knockout, scores.shape[-2], scores.shape[-1]):
                    scores[:, :, row, keys] = float("-inf")
            return scores

        return block

    return [(f"blocks.{layer}.attn.hook_attn_scores", make_hook(knockouts_at(condition, layer)))
            for layer in range(n_layers) if knockouts_at(condition, layer)]


def nnsight_generation(bench, ids, pixels, new_tokens: int):
    """nnsight as documented for generation: one `generate` trace per condition, `tracer.iter` over the
    steps, each knocked layer's additive mask edited through `.source` (eager)."""
    from nnsight.modeling.transformers import TransformersModel

    model = TransformersModel(bench.model, processor=bench.processor, tokenizer=bench.processor.tokenizer,
                              task="image-text-to-text")
    layers = model.model.language_model.layers

    def generate(condition) -> list[int]:
        knocked = [(index, layer, knockouts_at(condition, index)) for index, layer in enumerate(layers)]
        knocked = [(layer, knockouts) for _, layer, knockouts in knocked if knockouts]
        with model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=new_tokens, do_sample=False,
                            min_new_tokens=0, eos_token_id=NO_EOS, pad_token_id=0) as tracer:
            for _ in tracer.iter[:new_tokens] if knocked else []:
                for layer, knockouts in knocked:
                    call = layer.self_attn.source.attention_interface_1
                    args, kwargs = call.inputs
                    mask = args[4].clone()
                    for knockout in knockouts:
                        for row, keys in knocked_rows(knockout, mask.shape[-2], mask.shape[-1]):
                            mask[..., row, keys] = torch.finfo(mask.dtype).min
                    call.inputs = ((*args[:4], mask, *args[5:]), kwargs)
            tokens = tracer.result.save()
        return tokens[0, ids.shape[1]:].tolist()

    return generate


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

    nnsight_generate = nnsight_generation(bench, ids, pixels, new_tokens)

    def nnsight_side():
        outputs["nnsight"] = [nnsight_generate(c) for c in conditions]

    sides = {"engine": engine_side, "tl_bridge": bridge_side, "nnsight": nnsight_side}
    with torch.no_grad():
        for run in sides.values():
            run()  # warm-up outside the timing
        times = time_interleaved(sides, args.repeats, bench.device)
    ratios = {f"{name}/engine": [t / e for t, e in zip(times[name], times["engine"])] for name in ("tl_bridge", "nnsight")}
    identical = outputs["engine"] == outputs["tl_bridge"] == outputs["nnsight"]
    differing = [label for i, label in enumerate(labels)
                 if not outputs["engine"][i] == outputs["tl_bridge"][i] == outputs["nnsight"][i]]
    result = {
        "benchmark": "peers_generation",
        "description": f"{len(conditions)} K2 generation conditions x {new_tokens} tokens: engine vs TransformerBridge",
        "peers": {name: importlib.metadata.version(name) for name in ("transformer-lens", "nnsight")},
        "sizes": bench.sizes(),
        "sequence_length": length,
        "conditions": len(conditions),
        "condition_labels": labels,
        "new_tokens_per_condition": new_tokens,
        "timing": {name: summarize(t) for name, t in times.items()},
        "ratios_within_rounds": ratios,
        "ratio_median": {name: statistics.median(r) for name, r in ratios.items()},
        "equality": {
            "identical_generations": identical,
            "differing_conditions": differing,
            "distinct_generations": len({tuple(t) for t in outputs["engine"]}),
        },
    }
    finish(result, args, "peers_generation")
    print(", ".join(f"{name} = {r:.1f}x" for name, r in result["ratio_median"].items()) + f", identical = {identical}, "
          f"{result['equality']['distinct_generations']} distinct generations")
    return result


if __name__ == "__main__":
    main()
