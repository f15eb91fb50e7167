#!/usr/bin/env bash
# Snakemake runs this once inside a freshly created torch.yaml environment (`--sdm conda`), from
# the directory it was started in, the repository root: it adds this repository's library, whose
# dependencies torch.yaml already pins.
set -euo pipefail
python -m pip install --no-deps --editable .
