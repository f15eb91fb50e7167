"""Would batching several images' conditions into one batch pay? Where the time of one image goes.

    python -m benchmarks.multi_image_batching                 # real-geometry random model, CPU

The engine runs the conditions of ONE image per batch. With few conditions per image and short
suffixes (last-token knockouts), the per-image rows phase (one forward of k one-token rows after
the shared prefix) is small next to the vision tower and the prefix forward. Batching n images'
rows into one batch can save at most n * rows(k) - rows(n * k) per n images (the vision towers and
prefixes are the same work either way; batching the prefixes too only helps where batch-1 prefill
leaves the device idle). This measures, per k in {1, 4, 36}: prepare (vision tower + embeddings),
prefix, rows(k) and rows(n * k) for n = 8, and the best-case saving as a share of n images' time.
"""
from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import finish, start, synchronize
from benchmarks.knockout_last_token import knockout_conditions
from vlminterp.interventions import InterventionEngine

IMAGES = 8


class PhaseTimer:
    """Wall time of the engine's rows phase (`engine.batches.map`) during the last call."""

    def __init__(self, engine: InterventionEngine, device: str):
        self.seconds = 0.0
        original = engine.batches.map

        def timed(items, work):
            synchronize(device)
            began = time.perf_counter()
            result = original(items, work)
            synchronize(device)
            self.seconds = time.perf_counter() - began
            return result

        engine.batches.map = timed


def main(argv=None) -> dict:
    args, bench, ids, pixels = start(__doc__, argv)
    engine = InterventionEngine(bench.model, bench.adapter, max_batch_size=IMAGES * 36)
    rows_timer = PhaseTimer(engine, bench.device)
    knockouts, _ = knockout_conditions(bench.adapter, ids)
    pool = knockouts * IMAGES  # n * k rows: each row is one knockout at the last token, like its own image's
    per_k = {}
    with torch.no_grad():
        prepared = engine.prepare(ids, pixels)
        engine.logits(prepared, pool[:4])  # warm-up
        for k in (1, 4, 36):
            prepare_s, total_s, rows_s, rows_n_s = [], [], [], []
            for _ in range(args.repeats):
                synchronize(bench.device)
                began = time.perf_counter()
                prepared = engine.prepare(ids, pixels)
                synchronize(bench.device)
                prepare_s.append(time.perf_counter() - began)
                began = time.perf_counter()
                engine.logits(prepared, pool[:k])
                synchronize(bench.device)
                total_s.append(time.perf_counter() - began)
                rows_s.append(rows_timer.seconds)
                engine.logits(prepared, pool[: IMAGES * k])
                rows_n_s.append(rows_timer.seconds)
            prepare, total, rows, rows_n = (statistics.median(x) for x in (prepare_s, total_s, rows_s, rows_n_s))
            per_image = prepare + total
            saving = max(0.0, IMAGES * rows - rows_n)
            per_k[str(k)] = {
                "prepare_seconds": prepare,
                "prefix_seconds": total - rows,
                "rows_seconds": rows,
                f"rows_seconds_{IMAGES}x_batch": rows_n,
                "rows_share_of_image": rows / per_image,
                f"best_saving_share_of_{IMAGES}_images": saving / (IMAGES * per_image),
            }
            print(f"k={k}: prepare {prepare:.3f}s prefix {total - rows:.3f}s rows {rows:.4f}s "
                  f"rows x{IMAGES} batched {rows_n:.4f}s; best saving {100 * saving / (IMAGES * per_image):.1f}%")
    result = {
        "benchmark": "multi_image_batching",
        "description": f"time of one image by phase; best-case saving of batching {IMAGES} images' rows together",
        "sizes": bench.sizes(),
        "sequence_length": ids.shape[1],
        "images": IMAGES,
        "per_conditions_per_image": per_k,
    }
    finish(result, args, "multi_image_batching")
    return result


if __name__ == "__main__":
    main()
