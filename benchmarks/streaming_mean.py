"""Streaming mean of post-projector image embeddings: peak memory independent of the number of images.

    python -m benchmarks.streaming_mean                     # N = 32 and 4N = 128 images
    python -m benchmarks.streaming_mean --images 64

Each measurement runs in a fresh subprocess: streaming (StreamingMean.update per batch) vs a
deliberately naive baseline that keeps every embedding and calls torch.mean on the concatenation,
each for N and 4N images. Memory = the peak, over the loop, of the process's resident set size
(psutil, sampled after every batch and after the mean) minus its size just before the loop (model
building peaks higher than the loop, so ru_maxrss would hide it). On CUDA, also
torch.cuda.max_memory_allocated. The streaming result is checked against the naive mean.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import psutil
import torch

from benchmarks.common import base_parser, environment, load_bench_model, mark_start, output_path, save

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _measure(args, mode: str, n_images: int) -> dict:
    """Child process: embed n_images random images, compute the mean in `mode`, report peak memory."""
    bench = load_bench_model(args)
    from vlminterp.interventions import StreamingMean

    rng = np.random.default_rng(0)
    size = bench.adapter.grid.input_size
    batch = 4
    running, kept = StreamingMean(), []
    process = psutil.Process()
    baseline_rss = process.memory_info().rss
    loop_peak = baseline_rss
    if bench.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for start in range(0, n_images, batch):
            n = min(batch, n_images - start)
            pixels = torch.from_numpy(rng.standard_normal((n, 3, size, size), dtype=np.float32))
            features = bench.adapter.image_features(pixels.to(bench.device, bench.dtype))
            if mode == "streaming":
                running.update(features)
            else:
                kept.append(features)
            del features
            loop_peak = max(loop_peak, process.memory_info().rss)
        if mode == "streaming":
            mean = running.mean()
        else:
            everything = torch.cat(kept).reshape(-1, kept[0].shape[-1]).double()
            loop_peak = max(loop_peak, process.memory_info().rss)
            mean = everything.mean(0)
    out = {
        "mode": mode,
        "images": n_images,
        "loop_peak_rss_growth_mib": (loop_peak - baseline_rss) / 2**20,
        "rss_before_loop_mib": baseline_rss / 2**20,
        "mean_head": mean[:4].tolist(),
        "mean_checksum": float(mean.sum()),
    }
    if bench.device == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="N (the larger run uses 4N)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse_suppress())
    args = parser.parse_args(argv)
    mark_start()
    if args.child:
        print(json.dumps(_measure(args, args.child[0], int(args.child[1]))))
        return {}
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    runs = []
    for mode in ("streaming", "keep_all"):
        for n in (args.images, 4 * args.images):
            command = [sys.executable, "-m", "benchmarks.streaming_mean", *forwarded, "--child", mode, str(n)]
            completed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO_ROOT)
            runs.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    by = {(r["mode"], r["images"]): r for r in runs}
    n, n4 = args.images, 4 * args.images
    key = "peak_cuda_mib" if args.device == "cuda" else "loop_peak_rss_growth_mib"
    stream_growth = by[("streaming", n4)][key] - by[("streaming", n)][key]
    naive_growth = by[("keep_all", n4)][key] - by[("keep_all", n)][key]
    bench_sizes = load_bench_model(args).sizes()
    per_image_mib = bench_sizes["image_tokens"] * bench_sizes["hidden_size"] * 4 / 2**20
    means_agree = bool(
        np.allclose(by[("streaming", n4)]["mean_head"], by[("keep_all", n4)]["mean_head"], atol=1e-9)
        and abs(by[("streaming", n4)]["mean_checksum"] - by[("keep_all", n4)]["mean_checksum"]) < 1e-6
    )
    result = {
        "benchmark": "streaming_mean",
        "description": "peak memory of the mean post-projector embedding over N and 4N images",
        "sizes": bench_sizes,
        "memory_metric": key,
        "runs": runs,
        "streaming_peak_growth_mib_from_N_to_4N": stream_growth,
        "keep_all_peak_growth_mib_from_N_to_4N": naive_growth,
        "keep_all_growth_lower_bound_mib": 3 * n * per_image_mib,
        "streaming_state_bytes": bench_sizes["hidden_size"] * 8,
        "independent_of_N": abs(stream_growth) < 0.25 * 3 * n * per_image_mib,
        "streaming_equals_naive_mean": means_agree,
        "environment": environment(),
    }
    save(result, output_path(args, "streaming_mean"))
    print(
        f"peak growth N->4N: streaming {stream_growth:+.1f} MiB, keep-all {naive_growth:+.1f} MiB "
        f"(fp32 embeddings alone: {3 * n * per_image_mib:.0f}); means agree = {means_agree}"
    )
    return result


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
