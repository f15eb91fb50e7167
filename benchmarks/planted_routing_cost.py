"""What a planted routing costs the organism's training: instruction steps side by side.

    python -m benchmarks.planted_routing_cost            # default sizes, 2 threads, 5 rounds

The planted variants (issue #24) train the default organism's recipe with one attention
constraint added, so their training budget differs from the default's only by the constraint's
cost. This measures that cost where it is paid, in the instruction stage: the same training step
(forward with the constraint's layout pinned, answer loss, backward, AdamW step) of the
default-size organism built as `direct`, `query_routed` and `window` (layers 1-2), on the same
batch shape (language_batch_size rows, the default world's 36 image tokens, padded rows). The
variants take turns in every round, so a machine whose speed drifts (a shared host) slows all of
them alike; the ratios use each variant's median step. Written to
benchmarks/results/planted_routing_cost.json.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import RESULTS_DIR, environment, save
from vlminterp.models.routing import routing_layout
from vlminterp.organism.architecture import build_model
from vlminterp.organism.spec import OrganismSpec

VARIANTS = {"direct": {}, "query_routed": {"routing": "query_routed"},
            "window": {"routing": "window", "routing_layers": (1, 2)}}
IMAGE_TOKEN, VOCAB, LENGTH, IMAGE_TOKENS, ANSWER_START = 3, 400, 72, 36, 56


def _trainer(overrides: dict, batch: int):
    """One instruction step of a freshly built organism (same seed, same batch for every variant)."""
    spec = OrganismSpec(**overrides)
    model = build_model(spec, vocab_size=VOCAB, image_token_id=IMAGE_TOKEN, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, image_size=96, answer_marker=(5, 6))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, VOCAB, (batch, LENGTH), generator=generator)
    ids[:, 2:2 + IMAGE_TOKENS] = IMAGE_TOKEN
    attention = torch.ones(batch, LENGTH, dtype=torch.long)
    attention[: batch // 2, LENGTH - 8:] = 0          # half the rows padded, as a batch of mixed tasks
    labels = ids.clone()
    labels[:, :ANSWER_START] = -100
    start = torch.full((batch,), ANSWER_START)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with routing_layout(model, ids == IMAGE_TOKEN, start):
            logits = model(input_ids=ids, attention_mask=attention, pixel_values=None).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS_DIR / "planted_routing_cost.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = OrganismSpec().language_batch_size
    steps = {name: _trainer(overrides, batch) for name, overrides in VARIANTS.items()}
    for step in steps.values():
        step()                                           # warm-up: allocations, first-call paths
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            began = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds[name].append((time.perf_counter() - began) / args.steps)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {"batch": batch, "length": LENGTH, "image_tokens": IMAGE_TOKENS, "threads": args.threads,
              "rounds": args.rounds, "steps_per_round": args.steps, "seconds_per_step": seconds,
              "median_seconds_per_step": median,
              "ratio_over_direct": {name: median[name] / median["direct"] for name in median},
              "environment": environment()}
    for name in steps:
        print(f"{name:13s} {1000 * median[name]:7.1f} ms/step  ({result['ratio_over_direct'][name]:.3f}x direct)")
    save(result, args.out)
    return result


if __name__ == "__main__":
    main()
