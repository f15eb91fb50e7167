"""Rule write_effective_config: results/<run>/effective_config.yaml, the config this run used
(the given files merged in order, every schema default filled in)."""
from vlminterp.io import write_yaml
from vlminterp.runtime import rule_context

with rule_context(snakemake.log[0]):
    write_yaml({"config_files": list(snakemake.params.configfiles), **dict(snakemake.params.config)},
               snakemake.output[0])
