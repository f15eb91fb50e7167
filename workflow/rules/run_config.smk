# The run's effective configuration: the given config file(s) with every schema default filled in,
# written with the results (its own stage directory, so `dvc pull` brings it) and shown in the report.


rule write_effective_config:
    localrule: True
    output:
        report(results("config/effective_config.yaml"), caption=caption("effective_config"), category="Run"),
    params:
        config=config,  # the values are the rerun trigger; where they came from is not
    log:
        logs("write_effective_config"),
    conda:
        LIBRARY_ENV
    run:
        write_effective_config(params.config, config_sources(), output[0], log[0])
