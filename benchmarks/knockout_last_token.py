"""36 last-token knockout conditions on one image (Neo et al. N3 style): fast / naive time ratio.

    python -m benchmarks.knockout_last_token                      # real-geometry random model, CPU
    python -m benchmarks.knockout_last_token --model path/to/organism --repeats 5
    python -m benchmarks.knockout_last_token --device cuda --model llava-1.5-7b-random

Conditions: 6 key sets (object cells with buffer b = 0, 1, 2; the rest of the image; the last image
row; the whole image) x 6 layer windows (the paper's early / mid / late / early-mid / mid-late / all,
scaled to the model's depth); queries = the last prompt position, all heads.
Sides, timed interleaved in one run: fast = InterventionEngine (prefix shared, 36 rows batched);
naive = reference_logits (one full model forward per condition); sequential = the engine with
sharing and batching off (isolates what the two tricks buy). Equality is checked in the same run.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from benchmarks.common import engines, finish, start, summarize, time_interleaved
from vlminterp.interventions import Knockout, reference_logits

PAPER_WINDOWS = {"early": (0, 9), "mid": (11, 20), "late": (21, 31), "early-mid": (5, 14), "mid-late": (15, 24), "all": (0, 31)}


def scaled_windows(n_layers: int) -> dict[str, list[int]]:
    """The paper's 32-layer windows (inclusive) mapped onto `n_layers` layers."""
    scale = n_layers / 32
    out = {}
    for name, (first, last) in PAPER_WINDOWS.items():
        start = math.floor(first * scale)
        stop = max(start + 1, math.ceil((last + 1) * scale))
        out[name] = list(range(start, min(stop, n_layers)))
    return out


def dilate(cells: set[tuple[int, int]], rows: int, cols: int) -> set[tuple[int, int]]:
    out = set(cells)
    for r, c in cells:
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if 0 <= r + dr < rows and 0 <= c + dc < cols:
                    out.add((r + dr, c + dc))
    return out


def key_sets(adapter, input_ids) -> dict[str, list[int]]:
    grid = adapter.grid
    image = adapter.image_positions(input_ids)[0].tolist()
    centre_r, centre_c = grid.rows // 2, grid.cols // 2
    obj = {(r, c) for r in range(centre_r - 1, centre_r + 2) for c in range(centre_c - 1, centre_c + 2)}
    b1 = dilate(obj, grid.rows, grid.cols)
    b2 = dilate(b1, grid.rows, grid.cols)

    def positions(cells):
        return sorted(image[r * grid.cols + c] for r, c in cells)

    every = {(r, c) for r in range(grid.rows) for c in range(grid.cols)}
    return {
        "object_b0": positions(obj),
        "object_b1": positions(b1),
        "object_b2": positions(b2),
        "image_minus_object": positions(every - obj),
        "last_image_row": positions({(grid.rows - 1, c) for c in range(grid.cols)}),
        "whole_image": image,
    }


def knockout_conditions(adapter, input_ids) -> tuple[list[Knockout], list[str]]:
    """The 36 last-token knockouts (6 key sets x 6 layer windows) and their labels."""
    length = input_ids.shape[1]
    conditions, labels = [], []
    for set_name, keys in key_sets(adapter, input_ids).items():
        for window_name, layers in scaled_windows(adapter.n_layers).items():
            conditions.append(Knockout([length - 1], keys, layers=layers))
            labels.append(f"{set_name}@{window_name}")
    return conditions, labels


def main(argv=None) -> dict:
    args, bench, ids, pixels = start(__doc__, argv)
    length = ids.shape[1]
    windows = scaled_windows(bench.adapter.n_layers)
    conditions, labels = knockout_conditions(bench.adapter, ids)
    fast_engine, sequential_engine = engines(bench)
    results: dict[str, torch.Tensor] = {}

    def fast():
        results["fast"] = fast_engine.logits(fast_engine.prepare(ids, pixels), conditions)[:, -1]

    def naive():
        results["naive"] = torch.stack(
            [reference_logits(bench.model, bench.adapter, ids, pixels, c)[-1] for c in conditions]
        )

    def sequential():
        results["sequential"] = sequential_engine.logits(sequential_engine.prepare(ids, pixels), conditions)[:, -1]

    with torch.no_grad():
        fast()  # warm-up (allocator, lazy inits) outside the timing
        times = time_interleaved({"fast": fast, "naive": naive, "sequential": sequential}, args.repeats, bench.device)
    fast_vs_naive = (results["fast"].float() - results["naive"].float()).abs().max().item()
    fast_vs_sequential = (results["fast"].float() - results["sequential"].float()).abs().max().item()
    same_top1 = bool((results["fast"].argmax(-1) == results["naive"].argmax(-1)).all())
    clean_vs_knocked = (results["naive"].float() - results["naive"][0:1].float()).abs().amax(-1)
    result = {
        "benchmark": "knockout_last_token",
        "description": "36 last-token knockout conditions on one image: fast (prefix-shared + batched) vs naive",
        "sizes": bench.sizes(),
        "sequence_length": length,
        "conditions": len(conditions),
        "condition_labels": labels,
        "layer_windows": windows,
        "timing": {name: summarize(t) for name, t in times.items()},
        "ratio_naive_over_fast": min(times["naive"]) / min(times["fast"]),
        "ratio_naive_over_fast_median": float(np.median(times["naive"]) / np.median(times["fast"])),
        "ratio_sequential_over_fast": min(times["sequential"]) / min(times["fast"]),
        "target_ratio": 20.0 if args.model == "real-geometry" else 10.0,
        "equality": {
            "max_abs_logit_diff_fast_vs_naive": fast_vs_naive,
            "max_abs_logit_diff_fast_vs_sequential": fast_vs_sequential,
            "same_top1_all_conditions": same_top1,
            "tolerance": 1e-4 if bench.dtype == torch.float32 else 5e-2,
            "passed": fast_vs_naive < (1e-4 if bench.dtype == torch.float32 else 5e-2),
            "conditions_differing_from_first_by_gt_1e-3": int((clean_vs_knocked > 1e-3).sum()),
        },
    }
    finish(result, args, "knockout_last_token", ratio="ratio_naive_over_fast")
    print(
        f"naive/fast = {result['ratio_naive_over_fast']:.1f}x (target {result['target_ratio']:.0f}x), "
        f"sequential/fast = {result['ratio_sequential_over_fast']:.1f}x, max |diff| = {fast_vs_naive:.2e}"
    )
    return result


if __name__ == "__main__":
    main()
