"""Two torch processes side by side on a small machine: why `make test` sets OMP_WAIT_POLICY=PASSIVE.

    python -m benchmarks.side_by_side_threads            # 2 processes x 2 threads, both policies

Each process runs the same small-matrix loop (the organism's width, 256) on `--threads` threads.
It runs once alone and `--processes` times side by side, with OpenMP's default wait policy (idle
threads spin) and with PASSIVE (idle threads sleep). Written to
benchmarks/results/side_by_side_threads.json: the wall time of each process, and the ratio of the
side-by-side time to the time alone (2.0 is a fair share of 2 cores; far above it, the spinning
threads of one process steal the other's cores).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from benchmarks.common import RESULTS_DIR, environment, save

LOOP = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
layer, x = torch.nn.Linear(256, 256), torch.randn(256, 256)
start = time.perf_counter()
with torch.no_grad():
    for _ in range(int(sys.argv[2])):
        x = layer(x).tanh()
print(time.perf_counter() - start)
"""


def _run_side_by_side(processes: int, threads: int, steps: int, policy: str | None) -> list[float]:
    """Wall seconds of each of `processes` loops started together."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    running = [subprocess.Popen([sys.executable, "-c", LOOP, str(threads), str(steps)], env=env,
                                stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return [float(proc.communicate()[0]) for proc in running]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default=str(RESULTS_DIR / "side_by_side_threads.json"))
    args = parser.parse_args(argv)
    result = {"processes": args.processes, "threads": args.threads, "steps": args.steps, "policies": {}}
    for name, policy in (("default (spinning)", None), ("PASSIVE", "PASSIVE")):
        alone = _run_side_by_side(1, args.threads, args.steps, policy)[0]
        together = _run_side_by_side(args.processes, args.threads, args.steps, policy)
        result["policies"][name] = {"alone_s": alone, "side_by_side_s": together,
                                    "slowdown_side_by_side": max(together) / alone}
        print(f"{name:20s} alone {alone:6.2f} s   side by side {max(together):6.2f} s "
              f"({max(together) / alone:5.1f}x)")
    result["environment"] = environment()
    save(result, args.out)
    return result


if __name__ == "__main__":
    main()
