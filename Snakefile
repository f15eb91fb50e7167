# Reproduces Neo et al. (2025) and Kaduri et al. (2025) on LLaVA-style models.
#   snakemake --cores all                                  # default run: shapes world + organism
#   snakemake --cores all --configfile configs/<run>.yaml  # another run
#   snakemake --report results/<run>/report.html [--configfile ...]   # HTML report of a run
# No logic here: validation and input functions live in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default run; a run given with --configfile means exactly that file (plus the
# schema's defaults), never the default run's overrides.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/run_config.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/organism.smk"
include: "workflow/rules/model_fetch.smk"
# Neo et al. (N1-N3)
include: "workflow/rules/neo_targets.smk"
include: "workflow/rules/neo_ablation.smk"
include: "workflow/rules/neo_logit_lens.smk"
include: "workflow/rules/neo_blocking.smk"

# Kaduri et al. (K1-K4)
include: "workflow/rules/kaduri_images.smk"
include: "workflow/rules/kaduri_attention.smk"
include: "workflow/rules/kaduri_knockout.smk"
include: "workflow/rules/kaduri_localization.smk"
include: "workflow/rules/kaduri_reprompt.smk"

# Cross-image activation patching of object tokens
include: "workflow/rules/object_patching.smk"

# The papers' headline numbers beside this run's
include: "workflow/rules/paper_comparison.smk"


report: "workflow/report/workflow.rst"


# Cheap bookkeeping (selections, gathers, summaries, plots, pages) and downloads (login nodes
# usually have the network) are `localrule: True` in their rules: they stay on the submitting
# machine when an executor such as SLURM is used.


rule all:
    localrule: True
    input:
        get_final_output(),
    default_target: True
