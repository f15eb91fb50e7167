import os


def shown_path(path):
    """A config file as the run shows it: relative to the working directory when inside it."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith("..") else relative


# The run's effective configuration: the given config file with every schema default filled in,
# written next to the results and shown in the report (what a results/<run>/ directory meant).


rule write_effective_config:
    output:
        report(results("effective_config.yaml"), caption=caption("effective_config"), category="Run"),
    params:
        config=config,
        configfiles=[shown_path(path) for path in workflow.overwrite_configfiles] or ["config.yaml"],
    log:
        logs("write_effective_config"),
    script:
        "../scripts/write_effective_config.py"


FINAL_OUTPUTS.append(rules.write_effective_config.output[0])
