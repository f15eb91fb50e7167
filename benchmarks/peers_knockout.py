"""The 36 last-token knockouts of knockout_last_token.py, run by the engine and by nnsight, in one process.

    pip install -e .[bench]          # peers: an optional extra, never a dependency of the library or tests
    python -m benchmarks.peers_knockout                    # real-geometry random model, CPU

Sides (one model, timed in interleaved rounds, logits checked equal):
  engine           InterventionEngine.logits (prefix shared in place, 36 rows batched) under sdpa,
                   the model's attention as the experiments load it
  engine_eager     the same under eager attention (what the nnsight sides run)
  nnsight          nnsight used as documented: a trace per condition, the attention mask edited
                   through `.source` (the `attention_interface` call of each knocked layer's
                   self-attention) under eager attention. nnsight 0.8.1 batches invokes of text or
                   token ids only: invokes carrying pixel_values raise "Can't batch these inputs;
                   pass text or token ids.", so one invoke per trace is its idiom for a VLM.
  nnsight_prefix   what an nnsight user who hand-writes the prefix trick would do: one plain
                   forward over the first T-1 positions (use_cache), its KV cache expanded to the 36
                   rows, one trace over the last token of all rows with each row's mask edited.
  tl_bridge        TransformerLens 4's TransformerBridge (booted on a copy of the model, its on-the-fly
                   `pip install torchvision` turned off): one `run_with_hooks` per condition, the
                   knockout on `blocks.{l}.attn.hook_attn_scores` (scores set to -inf before softmax).
Ratios are taken within each round (same load) and summarised by their median; targets: >= 30x
against `nnsight` and `tl_bridge`, >= 1.5x against `nnsight_prefix` (all against `engine`).
"""
from __future__ import annotations

import importlib.metadata
import statistics
import sys

import torch
import transformers
from transformers import DynamicCache

from benchmarks.common import finish, start, summarize, time_interleaved
from benchmarks.knockout_last_token import knockout_conditions
from vlminterp.interventions import InterventionEngine


def nnsight_sides(bench, ids, pixels, conditions):
    """The two nnsight functions (idiomatic, hand-written prefix sharing), each -> (C, V) last logits."""
    from nnsight import NNsight

    model = NNsight(bench.model)
    layers = model.model.language_model.layers
    length = ids.shape[1]

    def block(rows_of_conditions):
        """Edit the additive mask each layer's attention function gets: row r loses the keys of
        condition r in that condition's layers (requests go in layer order, as nnsight needs)."""
        for index, layer in enumerate(layers):
            knocked = [(row, c) for row, c in enumerate(rows_of_conditions) if index in c.layers]
            if not knocked:
                continue
            call = layer.self_attn.source.attention_interface_1
            args, kwargs = call.inputs
            mask = args[4].expand(len(rows_of_conditions), *args[4].shape[1:]).clone()
            for row, condition in knocked:
                mask[row, :, -1, torch.as_tensor(list(condition.key_positions))] = torch.finfo(mask.dtype).min
            call.inputs = ((*args[:4], mask, *args[5:]), kwargs)

    def idiomatic():
        out = []
        for condition in conditions:
            with model.trace(input_ids=ids, pixel_values=pixels):
                block([condition])
                out.append(model.lm_head.output[:, -1].save())
        return torch.cat(out)

    def prefix_shared():
        with torch.no_grad():
            prefix = bench.model(input_ids=ids[:, :-1], pixel_values=pixels, use_cache=True).past_key_values
        batch = len(conditions)
        cache = DynamicCache(ddp_cache_data=[
            (layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1)) for layer in prefix.layers
        ])
        with model.trace(input_ids=ids[:, -1:].expand(batch, 1), past_key_values=cache, use_cache=True):
            block(conditions)
            logits = model.lm_head.output[:, -1].save()
        return logits

    return idiomatic, prefix_shared


def boot_bridge(bench):
    """TransformerLens 4's TransformerBridge over a copy of the model (the bridge forces eager attention
    on what it wraps), its on-the-fly `pip install torchvision` turned off."""
    import copy
    import tempfile

    import transformer_lens.model_bridge.sources.transformers.helpers as bridge_helpers
    from transformer_lens.model_bridge import TransformerBridge

    bridge_helpers._ensure_torchvision = lambda: False
    model = copy.deepcopy(bench.model)
    model.config.architectures = [type(model).__name__]  # a random-weight model built from a config has none
    folder = tempfile.mkdtemp(prefix="vlminterp-bridge-")  # the bridge reads its tokenizer from a folder
    bench.processor.save_pretrained(folder)
    return TransformerBridge.boot_transformers(
        folder, hf_model=model, tokenizer=transformers.AutoTokenizer.from_pretrained(folder), device=bench.device
    )


def bridge_side(bench, ids, pixels, conditions):
    """One `run_with_hooks` per condition, the knockout on `hook_attn_scores`."""
    bridge = boot_bridge(bench)

    def knocked(condition):
        keys = torch.as_tensor(list(condition.key_positions))

        def block(scores, hook):
            scores[:, :, -1, keys] = float("-inf")
            return scores

        hooks = [(f"blocks.{layer}.attn.hook_attn_scores", block) for layer in condition.layers]
        return bridge.run_with_hooks(ids, pixel_values=pixels, fwd_hooks=hooks)[:, -1]

    return lambda: torch.cat([knocked(c) for c in conditions])


def main(argv=None) -> dict:
    transformers.logging.set_verbosity_error()
    argv = list(sys.argv[1:] if argv is None else argv) + ["--attn", "eager"]  # nnsight edits eager's mask
    args, bench, ids, pixels = start(__doc__, argv)
    import nnsight


    conditions, labels = knockout_conditions(bench.adapter, ids)
    engine = InterventionEngine(bench.model, bench.adapter)
    idiomatic, prefix_shared = nnsight_sides(bench, ids, pixels, conditions)
    outputs: dict[str, torch.Tensor] = {}
    def engine_logits():
        return engine.logits(engine.prepare(ids, pixels), conditions)[:, -1]

    def engine_sdpa():
        bench.model.set_attn_implementation("sdpa")  # as the experiments run it
        try:
            return engine_logits()
        finally:
            bench.model.set_attn_implementation("eager")

    sides = {
        "engine": engine_sdpa,
        "engine_eager": engine_logits,
        "nnsight": idiomatic,
        "nnsight_prefix": prefix_shared,
        "tl_bridge": bridge_side(bench, ids, pixels, conditions),
    }

    def recorded(name):
        def run():
            outputs[name] = sides[name]().detach()
        return run

    with torch.no_grad():
        for name in sides:
            recorded(name)()  # warm-up (source instrumentation, lazy inits) outside the timing
        times = time_interleaved({name: recorded(name) for name in sides}, args.repeats, bench.device)
    diffs = {name: (outputs[name].float() - outputs["engine"].float()).abs().max().item() for name in sides}
    ratios = {
        f"{name}/{base}": [t / e for t, e in zip(times[name], times[base])]
        for base in ("engine", "engine_eager") for name in ("nnsight", "nnsight_prefix", "tl_bridge")
    }
    tolerance = 1e-4 if bench.dtype == torch.float32 else 5e-2
    result = {
        "benchmark": "peers_knockout",
        "description": "36 last-token knockouts: the engine vs nnsight (idiomatic; hand-written prefix sharing)",
        "peers": {"nnsight": nnsight.__version__, "transformer-lens": importlib.metadata.version("transformer-lens")},
        "attention": "engine: sdpa; every other side: eager",
        "sizes": bench.sizes(),
        "sequence_length": ids.shape[1],
        "conditions": len(conditions),
        "timing": {name: summarize(t) for name, t in times.items()},
        "ratios_within_rounds": ratios,
        "ratio_median": {name: statistics.median(r) for name, r in ratios.items()},
        "targets": {"nnsight/engine": 30.0, "nnsight_prefix/engine": 1.5, "tl_bridge/engine": 30.0},
        "equality": {
            "max_abs_logit_diff_vs_engine": diffs,
            "tolerance": tolerance,
            "passed": all(d < tolerance for d in diffs.values()),
            "conditions_differing_from_first_by_gt_1e-3": int(
                ((outputs["engine"] - outputs["engine"][:1]).abs().amax(-1) > 1e-3).sum()
            ),
        },
    }
    result["target_met"] = {
        name: result["ratio_median"][name] >= target for name, target in result["targets"].items()
    }
    finish(result, args, "peers_knockout")
    print(
        ", ".join(f"{name} = {r:.1f}x" for name, r in result["ratio_median"].items())
        + f"; max |diff| {diffs}"
    )
    return result


if __name__ == "__main__":
    main()
