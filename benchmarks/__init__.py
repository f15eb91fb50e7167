"""Benchmarks of the intervention engine: speed RATIOS measured side by side in one run, with the
equality check (fast == naive) done in the same run. Results go to benchmarks/results/*.json.

    python -m benchmarks.run_all                      # all benchmarks, CPU, real-geometry model
    python -m benchmarks.knockout_last_token --model path/to/organism_dir
    python -m benchmarks.run_all --device cuda --model llava-1.5-7b-random --dtype bf16
"""
