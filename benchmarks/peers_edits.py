"""Steering and activation patching: the engine vs nnsight and TransformerLens's bridge, in one process.

    pip install -e .[bench]
    python -m benchmarks.peers_edits                      # real-geometry random model, CPU

Four workloads of 36 conditions each on the paper's input (576 image tokens), last-position logits:
  steer_last     Steer(v_c, [T-1], layers=[c % L]): the last prompt position (a shared prefix, as N3/K2 have)
  steer_image    Steer(v_c, 16 image tokens (one 4x4 block per condition), layers=[c % L])
  patch_last     resid_post.{c % L} at T-1 patched from a second image's run
  patch_image    resid_post.{c % L} at 16 object tokens patched from a second image (aligned by the grid)
Sides: engine (InterventionEngine.logits with its default layout `FAST`: conditions split into groups
by where they start, each sharing its own prefix, at most 2048 own positions per call of rows);
engine_one_prefix (the layout the experiments pin, `ONE_PREFIX`: one prefix, all 36 rows in one call); nnsight as documented
(one trace per condition: invokes carrying pixel_values cannot be batched in nnsight 0.8.1; the layer
output replaced with its edited copy); tl_bridge (TransformerLens 4 TransformerBridge,
`run_with_hooks` per condition on `blocks.{l}.hook_out`, the block's output). Timed in interleaved
rounds; ratios within rounds, summarised by their median; logits checked equal.
`--workloads steer_image,patch_image` runs a subset.
"""
from __future__ import annotations

import importlib.metadata
import statistics
import sys

import torch
import transformers

from benchmarks.common import finish, start, summarize, time_interleaved
from benchmarks.peers_knockout import boot_bridge
from vlminterp.interventions import InterventionEngine, Patch, Steer, record_site
from vlminterp.interventions.engine import ONE_PREFIX

CONDITIONS = 36


def workloads(bench, engine, ids, pixels, source_ids, source_pixels):
    """{name: [(layer, positions, kind, tensor)]}: what each side applies (kind "add" or "set")."""
    adapter = bench.adapter
    length, layers, d = ids.shape[1], adapter.n_layers, adapter.hidden_size
    (image,) = adapter.image_positions(ids)
    (source_image,) = adapter.image_positions(source_ids)
    rows = cols = int(len(image) ** 0.5)
    size = max(1, rows // 6)  # 4x4 blocks on LLaVA-1.5's 24x24 grid, one per condition
    blocks = [[(r % rows) * cols + c % cols for r in range(size * (k // 6), size * (k // 6) + size)
               for c in range(size * (k % 6), size * (k % 6) + size)] for k in range(CONDITIONS)]
    generator = torch.Generator().manual_seed(0)
    vectors = [torch.randn(d, generator=generator).to(bench.device, bench.dtype) for _ in range(CONDITIONS)]
    source = engine.prepare(source_ids, source_pixels)
    out = {"steer_last": [], "steer_image": [], "patch_last": [], "patch_image": []}
    for c in range(CONDITIONS):
        layer = c % layers
        block_target, block_source = image[blocks[c]].tolist(), source_image[blocks[c]].tolist()
        out["steer_last"].append((layer, [length - 1], "add", vectors[c]))
        out["steer_image"].append((layer, block_target, "add", vectors[c]))
        out["patch_last"].append((layer, [length - 1], "set",
                                  record_site(engine, source, f"resid_post.{layer}", [source_ids.shape[1] - 1])))
        out["patch_image"].append((layer, block_target, "set",
                                   record_site(engine, source, f"resid_post.{layer}", block_source)))
    return out


def as_edit(layer, positions, kind, tensor):
    if kind == "add":
        return Steer(tensor, positions, layers=[layer])
    return Patch(f"resid_post.{layer}", positions, tensor)


def edited(hidden, positions, kind, tensor):
    hidden = hidden.clone()
    if kind == "add":
        hidden[:, positions] += tensor
    else:
        hidden[:, positions] = tensor
    return hidden


def nnsight_side(bench, ids, pixels, work):
    from nnsight import NNsight

    model = NNsight(bench.model)
    layers = model.model.language_model.layers

    def run():
        out = []
        for layer, positions, kind, tensor in work:
            with model.trace(input_ids=ids, pixel_values=pixels):
                layers[layer].output = edited(layers[layer].output, positions, kind, tensor)
                out.append(model.lm_head.output[:, -1].save())
        return torch.cat(out)

    return run


def bridge_side(bridge, ids, pixels, work):
    def one(layer, positions, kind, tensor):
        def hook(hidden, hook):
            return edited(hidden, positions, kind, tensor)

        return bridge.run_with_hooks(ids, pixel_values=pixels, fwd_hooks=[(f"blocks.{layer}.hook_out", hook)])[:, -1]

    return lambda: torch.cat([one(*w) for w in work])


def main(argv=None) -> dict:
    transformers.logging.set_verbosity_error()
    selected = None
    if argv is None:
        argv = sys.argv[1:]
    if "--workloads" in argv:
        at = argv.index("--workloads")
        selected, argv = argv[at + 1].split(","), argv[:at] + argv[at + 2:]
    args, bench, ids, pixels = start(__doc__, argv)
    import nnsight

    from benchmarks.common import paper_inputs

    second = paper_inputs(bench, seed=1)
    engine = InterventionEngine(bench.model, bench.adapter)
    one_prefix = InterventionEngine(bench.model, bench.adapter, batching=ONE_PREFIX)
    with torch.no_grad():
        work = workloads(bench, engine, ids, pixels, second["input_ids"], second["pixel_values"])
    work = {name: items for name, items in work.items() if selected is None or name in selected}
    bench.model.set_attn_implementation("eager")  # the bridge forces eager on its copy: boot it the same way
    bridge = boot_bridge(bench)
    bench.model.set_attn_implementation("sdpa")
    prepared = engine.prepare(ids, pixels)
    results, outputs = {}, {}
    with torch.no_grad():
        for name, items in work.items():
            conditions = [as_edit(*w) for w in items]
            sides = {
                "engine": lambda conditions=conditions: engine.logits(prepared, conditions)[:, -1],
                "engine_one_prefix": lambda conditions=conditions: one_prefix.logits(prepared, conditions)[:, -1],
                "nnsight": nnsight_side(bench, ids, pixels, items),
                "tl_bridge": bridge_side(bridge, ids, pixels, items),
            }
            got = {}

            def recorded(side, got=got, sides=sides):
                def run():
                    got[side] = sides[side]().detach()
                return run

            for side in sides:
                recorded(side)()  # warm-up
            times = time_interleaved({side: recorded(side) for side in sides}, args.repeats, bench.device)
            diffs = {side: (got[side].float() - got["engine"].float()).abs().max().item() for side in sides}
            ratios = {f"{side}/{base}": [t / e for t, e in zip(times[side], times[base])]
                      for base in ("engine", "engine_one_prefix") for side in ("nnsight", "tl_bridge")}
            results[name] = {
                "timing": {side: summarize(t) for side, t in times.items()},
                "ratios_within_rounds": ratios,
                "ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
                "max_abs_logit_diff_vs_engine": diffs,
                "conditions_differing_from_each_other_by_gt_1e-3": int(
                    ((got["engine"] - got["engine"][:1]).abs().amax(-1) > 1e-3).sum()),
            }
            outputs[name] = got
            print(name, {k: round(v, 1) for k, v in results[name]["ratio_median"].items()}, "max |diff|", diffs,
                  flush=True)
    tolerance = 1e-4 if bench.dtype == torch.float32 else 5e-2
    targets = {name: t for name, t in {"steer_last": 10.0, "patch_last": 10.0, "steer_image": 1.0,
                                       "patch_image": 1.0}.items() if name in results}
    result = {
        "benchmark": "peers_edits",
        "description": "36 steering / patching conditions: the engine vs nnsight (idiomatic) and the TL bridge",
        "peers": {"nnsight": nnsight.__version__, "transformer-lens": importlib.metadata.version("transformer-lens")},
        "attention": "engine and nnsight: sdpa; tl_bridge: eager (it forces eager on its copy)",
        "engine_layouts": {"engine": "FAST (the default)", "engine_one_prefix": "ONE_PREFIX (the experiments')"},
        "sizes": bench.sizes(),
        "sequence_length": ids.shape[1],
        "conditions": CONDITIONS,
        "workloads": results,
        "targets_min_ratio_vs_both_peers": targets,
        "equality": {"tolerance": tolerance, "passed": all(
            d < tolerance for r in results.values() for d in r["max_abs_logit_diff_vs_engine"].values())},
    }
    result["target_met"] = {name: min(results[name]["ratio_median"][f"{peer}/{base}"] for peer in ("nnsight", "tl_bridge"))
                            >= t for name, t in targets.items() for base in ("engine",)}
    finish(result, args, "peers_edits")
    return result


if __name__ == "__main__":
    main()
