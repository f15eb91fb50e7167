"""What the Snakemake workflow needs around the library: config checks, the stage registry and the
functions its rule scripts call, shards, rule logging, stale locks, DVC artifacts."""
