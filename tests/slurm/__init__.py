"""SLURM harness: a private single-node cluster (cluster.py) and the tests that use it."""
