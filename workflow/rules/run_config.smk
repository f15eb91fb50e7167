# The run's effective configuration: the given config file(s) with every schema default filled in,
# written with the results (its own stage directory, so `dvc pull` brings it) and shown in the report.
import os


def shown_path(path):
    """A config source as the run shows it: a file relative to the working directory when inside it."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith("..") else relative


rule write_effective_config:
    output:
        report(results("config/effective_config.yaml"), caption=caption("effective_config"), category="Run"),
    params:
        config=config,  # the values are the rerun trigger; where they came from is not
    log:
        logs("write_effective_config"),
    run:
        from vlminterp.io import write_yaml

        sources = [shown_path(source) if source != "--config" else source for source in config_sources()]
        write_yaml({"config_files": sources, **dict(params.config)}, output[0])
        Path(log[0]).write_text(f"{output[0]}: the config of {', '.join(sources)} with the schema's defaults\n")


FINAL_OUTPUTS.append(rules.write_effective_config.output[0])
