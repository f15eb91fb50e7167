"""Where the time of 36 inside-image edits goes: the engine's layouts against 36 plain forwards.

    python -m benchmarks.layout_inside_image      # real-geometry random model, CPU, ~20 min at load 15

The `steer_image` workload of benchmarks/peers_edits.py (36 conditions, a 4x4 block of image tokens
steered at one layer each). Sides, interleaved rounds, wall time: plain (36 language-model forwards
with a forward hook, nnsight's work without its tracing); the engine with ONE_PREFIX at 64, 4 and 1
rows per call; grouped (prefix groups, all of a group's rows in one call); FAST (groups, at most 2048
own positions per call). Ratios plain / side within rounds, median; logits checked against plain.
"""
from __future__ import annotations

import statistics
import time

import torch
import transformers

from benchmarks.common import finish, paper_inputs, start
from benchmarks.peers_edits import as_edit, edited, workloads
from vlminterp.interventions import InterventionEngine
from vlminterp.interventions.engine import FAST, ONE_PREFIX, Batching


def main(argv=None) -> dict:
    transformers.logging.set_verbosity_error()
    args, bench, ids, pixels = start(__doc__, argv)
    second = paper_inputs(bench, seed=1)
    engine = InterventionEngine(bench.model, bench.adapter)
    with torch.no_grad():
        items = workloads(bench, engine, ids, pixels, second["input_ids"], second["pixel_values"])["steer_image"]
    prepared = engine.prepare(ids, pixels)
    conditions = [as_edit(*w) for w in items]
    layers = bench.adapter.decoder_layers

    def plain():
        out = []
        for layer, positions, kind, tensor in items:
            def hook(module, args, output, positions=positions, kind=kind, tensor=tensor):
                if isinstance(output, tuple):
                    return (edited(output[0], positions, kind, tensor), *output[1:])
                return edited(output, positions, kind, tensor)

            handle = layers[layer].register_forward_hook(hook)
            try:
                hidden, _ = bench.adapter.language_model_forward(prepared.inputs_embeds, use_cache=False)
            finally:
                handle.remove()
            out.append(bench.adapter.unembed(hidden[:, -1]))
        return torch.cat(out)

    def side(batching, rows=64):
        layout = InterventionEngine(bench.model, bench.adapter, max_batch_size=rows, batching=batching)
        return lambda: layout.logits(prepared, conditions)[:, -1]

    sides = {"plain": plain, "one_prefix_64_rows": side(ONE_PREFIX), "one_prefix_4_rows": side(ONE_PREFIX, 4),
             "one_prefix_1_row": side(ONE_PREFIX, 1),
             "grouped_one_call_per_group": side(Batching(group_prefixes=True, row_positions=None)),
             "fast": side(FAST)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    with torch.no_grad():
        expected = plain()
        diffs = {name: (f() - expected).abs().max().item() for name, f in sides.items()}  # also the warm-up
        for _ in range(args.repeats):
            for name, function in sides.items():
                began = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - began)
    ratios = {name: statistics.median(p / t for p, t in zip(times["plain"], times[name])) for name in sides}
    for name in sides:
        print(f"{name:28s} plain/side {ratios[name]:.2f}  seconds {[round(t, 2) for t in times[name]]}")
    result = {"benchmark": "layout_inside_image", "sizes": bench.sizes(), "sequence_length": ids.shape[1],
              "seconds": times, "ratio_plain_over_side_median": ratios, "max_abs_logit_diff_vs_plain": diffs}
    return finish(result, args, "layout_inside_image")


if __name__ == "__main__":
    main()
