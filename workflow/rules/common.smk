# Config validation, output paths and input functions shared by every stage.
# Rules in the other .smk files only call the helpers defined here.
import sys
from pathlib import Path

from vlminterp.workflow.artifacts import restore_pulled_stages, run_stage_dirs
from vlminterp.workflow.config_checks import ConfigError, check_config, check_judge_key
from vlminterp.workflow.registry import STAGES
from vlminterp.io import write_effective_config
from vlminterp.workflow.sharding import shard_names
from vlminterp.command_line import two_configfile_flags
from vlminterp.workflow.stale_locks import another_snakemake_running, clear_stale_locks, explain_lock_refusal


def config_sources():
    """Where this run's config came from, for error messages: the --configfile files (or the
    default config.yaml) and --config, when given."""
    sources = [str(f) for f in workflow.overwrite_configfiles] or ["config.yaml"]
    if workflow.config_settings.config:
        sources.append("--config")
    return sources


# Snakemake keeps only the last --configfile flag's files: say which were dropped.
if workflow.is_main_process and (_two_flags := two_configfile_flags(sys.argv)):
    print(_two_flags, file=sys.stderr)

# The schema (filling its defaults into `config`) and the rules tying keys together, before any
# job: one short line per problem, naming the key and the config file.
try:
    check_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml", config_sources())
except ConfigError as error:
    raise WorkflowError(str(error)) from None

RUN = config["run"]
SEED = config["seed"]

# Locks left by a Snakemake that was killed (kill -9, a lost session) are removed, so the same
# command resumes; those of a Snakemake still running here are kept (vlminterp.workflow.stale_locks).
if workflow.is_main_process and clear_stale_locks(Path.cwd()):
    print("removed the locks of a Snakemake that is no longer running (resuming)", file=sys.stderr)
if workflow.is_main_process and another_snakemake_running():
    explain_lock_refusal(Path.cwd())

# Stages fetched by a plain `dvc pull` (or `dvc checkout`) get back the times and Snakemake
# metadata recorded at push, before Snakemake compares them (vlminterp.workflow.artifacts).
for _stage in restore_pulled_stages(Path.cwd(), Path(workflow.basedir), run_stage_dirs(Path.cwd(), RUN)):
    print(f"restored the recorded times and Snakemake metadata of pulled {_stage.relative_to(Path.cwd())}/",
          file=sys.stderr)


def results(path):
    """Path of an output of this run: results/<run>/<path>."""
    return f"results/{RUN}/{path}"


def logs(rule_name):
    """Log file of one rule (or one rule instance) of this run."""
    return f"results/{RUN}/logs/{rule_name}.log"


def caption(name):
    """Report caption shipped in workflow/report/."""
    return f"../report/{name}.rst"


def figure(path, name, category, subcategory=None):
    """A PNG figure that appears in the Snakemake report with its caption."""
    return report(results(path), caption=caption(name), category=category,
                  subcategory=subcategory)


def uses_organism():
    """True when the run trains the model organism instead of loading a published model."""
    return config["model"]["kind"] == "organism"


def planted_routing():
    """The organism's planted routing (issue #24), as validate_methods takes it: routing, band
    (window's layers) and the language model's depth; direct for a pretrained model."""
    organism = config["model"]["organism"] if uses_organism() else {}
    return {"routing": organism.get("routing", "direct"), "band": list(organism.get("routing_layers", [])),
            "n_layers": organism.get("text_layers", 4)}


DATASET = config["dataset"]
NEO = config["neo"]
AUTHORS_DATA = NEO["authors_data"]
KADURI = config["kaduri"]
# With Neo et al.'s noising filter on, select_neo_targets writes the candidates and
# screen_neo_targets the selection; every COCO image a candidate needs is downloaded.
SCREENING = NEO["screening"]
NEO_CANDIDATES = results("neo/candidates.csv") if SCREENING["enabled"] else results("neo/selection.csv")
# The software environment of every job (`--sdm conda`): each one imports the vlminterp library.
LIBRARY_ENV = "../../envs/torch.yaml"


def uses_shapes():
    """True when the run reads the generated shapes world rather than COCO."""
    return DATASET["kind"] == "shapes"


def dataset_root():
    """Directory of the COCO-format dataset this run reads (annotations/ and images/)."""
    return results("data/shapes") if uses_shapes() else DATASET["coco"]["root"]


def get_dataset_dir():
    """Input of rules that need the dataset's images: the world directory or COCO's manifest."""
    if uses_shapes():
        return results("data/shapes")
    return f"{dataset_root()}/images/{DATASET['split']}.manifest.csv"


def get_annotations():
    """Input of rules that read annotations only (selection rules): no image is needed yet."""
    if uses_shapes():
        return results("data/shapes")
    return f"{dataset_root()}/annotations/instances_{DATASET['split']}.json"


def dataset_dir_of_input(wildcards, input):
    """Params function: the dataset root a job reads, found from its dataset input (the shapes world
    directory itself; under COCO's root, annotations/instances_<split>.json or images/<split>.manifest.csv)."""
    path = input.world if "world" in input.keys() else input.annotations
    return path if uses_shapes() else str(Path(path).parent.parent)


def fetches_model():
    """True when the run's model is a hub id, fetched by rule fetch_model (not the organism, not
    a local directory)."""
    from vlminterp.models.loading import looks_like_path

    return not uses_organism() and not looks_like_path(config["model"]["pretrained"]["id"])


def get_model_dir():
    """Input list for rules that load the model: the organism's directory, the fetched hub model's
    manifest (rule fetch_model), or nothing (a local model directory)."""
    if uses_organism():
        return [results("model")]
    return [results("model_fetch/manifest.json")] if fetches_model() else []


def model_spec(stage=None):
    """Keyword arguments of vlminterp.models.loading.ModelSpec for this run's model, in the precision
    of `stage` (model.stages.<stage> over model.dtype / model.quantization)."""
    from vlminterp.workflow.config_checks import stage_precision

    model = config["model"]
    if uses_organism():
        id_or_path, revision = results("model"), None
    else:
        id_or_path, revision = model["pretrained"]["id"], model["pretrained"]["revision"]
    return dict(id_or_path=id_or_path, revision=revision, **stage_precision(config, stage),
                device=config["device"], attn_implementation=model["attn_implementation"])


def model_threads(experiment=False):
    """Threads of a job that loads the model (resources.model_jobs.threads); experiment stages of
    the CPU organism use one (measured: 0.4 s per image on 1 thread, 13 s on 2 of a busy machine)."""
    if experiment and uses_organism() and config["device"] == "cpu":
        return 1
    return config["resources"]["model_jobs"]["threads"]


def model_resources():
    """Scheduler resources of a job that loads the model (config resources.model_jobs)."""
    wanted = dict(config["resources"]["model_jobs"])
    wanted.pop("threads")
    if not wanted.get("slurm_partition"):
        wanted.pop("slurm_partition", None)
    return wanted


def check_device():
    """Fail before any job runs when the config asks for a GPU this machine does not have."""
    if config["device"] != "cuda" or not workflow.local_exec:
        return  # cluster jobs run on GPU nodes; the submitting node needs none
    import torch

    if not torch.cuda.is_available():
        raise WorkflowError(
            "config device=cuda but no CUDA GPU is visible here (torch.cuda.is_available() is "
            "False). Run on a GPU machine, submit with --profile profiles/slurm, or set "
            "device: cpu (slow for a 7B model)."
        )


def check_model():
    """Fail before any job runs when the published model's files are not where the config says: a
    local directory that is missing or incomplete, or (HF_HUB_OFFLINE) a hub id not in the cache.
    In onstart, so that `snakemake -n` still lists the DAG on a machine without the weights."""
    if uses_organism():
        return  # rule train_organism makes the model
    from vlminterp.models.loading import ModelSpec, WeightsNotAvailableError, check_model_files

    try:
        check_model_files(ModelSpec(**model_spec()))
    except WeightsNotAvailableError as error:
        raise WorkflowError(str(error)) from None


def check_secrets():
    """Fail before any job when the enabled LLM judge's API-key variable is unset."""
    try:
        check_judge_key(config)
    except ConfigError as error:
        raise WorkflowError(str(error)) from None


onstart:
    check_device()
    check_model()
    check_secrets()


def shards(n_images):
    """Shard ids ("000", ...) splitting `n_images` per-image jobs (sharding.images_per_shard)."""
    return shard_names(n_images, config["sharding"]["images_per_shard"])


def shard_outputs(pattern, n_images):
    """The per-shard files a gather job concatenates: `pattern` with each `{shard}` filled in."""
    return expand(results(pattern), shard=shards(n_images))


# ---- Neo et al. (N1-N3) -----------------------------------------------------------------------
def neo_vocabulary():
    """Synonym vocabulary of the Neo stages: neo.vocabulary, or the one named after the dataset kind."""
    return NEO["vocabulary"] or DATASET["kind"]


def neo_images():
    """Most targets the Neo stages study (fixes their number of shards)."""
    return NEO["selection"]["max_images"]


def neo_questions_file():
    """The VQA questions file: the authors' questions converted, the user's file, or None (template)."""
    if AUTHORS_DATA["questions"]:
        return results("neo/authors_questions.csv")
    return NEO["prompts"]["vqa_questions_file"]


def neo_questions_input():
    """{"questions": file} when the run asks questions from a file (so stages rerun when it changes)."""
    return {"questions": neo_questions_file()} if neo_questions_file() else {}


def neo_session(split, stage=None):
    """A Neo stage's session on `split`: keyword arguments of vlminterp.experiments.shared.session.StageConfig
    (the model in `stage`'s precision)."""
    return dict(model=model_spec(stage), dataset_dir=dataset_root(), split=split, vocabulary=neo_vocabulary(),
                prompt=dict(geometry=NEO["cells"]["geometry"], system_prompt=NEO["prompts"]["system_prompt"]))


def neo_stage_params(stage):
    """Params every per-image Neo stage (rule `stage`) passes to its vlminterp.workflow.stages function."""
    return dict(session=neo_session(NEO["selection"]["split"], stage), prompts=NEO["prompts"],
                images_per_shard=config["sharding"]["images_per_shard"], seed=SEED)


def neo_selection():
    """The Neo targets: select_neo_targets' table, or with the noising filter what it kept."""
    return rules.screen_neo_targets.output.selection if SCREENING["enabled"] else rules.select_neo_targets.output[0]


def neo_stage_inputs():
    """Inputs every per-image Neo stage reads (after rules select_neo_targets and map_object_cells)."""
    return dict(world=get_dataset_dir(), selection=neo_selection(),
                cells=rules.map_object_cells.output[0], model=get_model_dir(), **neo_questions_input())


def neo_ablation_mean():
    """The mean the ablation replaces embeddings with: this run's, or the authors' (neo.ablation.mean_vector)."""
    if NEO["ablation"]["mean_vector"] == "authors":
        return results("neo/authors_mean_embedding.safetensors")
    return rules.compute_mean_embedding.output[0]


# ---- Kaduri et al. (K1-K4) --------------------------------------------------------------------
def kaduri_split():
    """Dataset split of the K stages: kaduri.split, else dataset.split."""
    return KADURI["split"] or DATASET["split"]


def kaduri_shards(pattern):
    """The shard files of a per-image K stage (n_images split by sharding.images_per_shard)."""
    return shard_outputs(pattern, KADURI["n_images"])


def kaduri_vocabulary():
    """Synonym vocabulary of the judges: kaduri.vocabulary, else the dataset kind's (shapes, coco)."""
    return KADURI["vocabulary"] or DATASET["kind"]


def kaduri_session():
    """The K stages' session: keyword arguments of vlminterp.experiments.shared.session.StageConfig."""
    return dict(model=model_spec("kaduri"), dataset_dir=dataset_root(), split=kaduri_split(),
                batch_size=KADURI["batch_size"], vocabulary=kaduri_vocabulary(),
                prompt=dict(text=KADURI["prompt"], system_prompt=KADURI["system_prompt"],
                            geometry=KADURI["geometry"], description_tokens=KADURI["description_tokens"]))


# ---- what a run makes ---------------------------------------------------------------------------
def get_image_selections(wildcards):
    """Selection tables (image_id, file_name) whose images a COCO run downloads: the union of the
    Neo candidate targets, the mean's images and the Kaduri images (rule download_coco_images)."""
    return [rules.select_neo_targets.output[0], rules.select_mean_images.output[0],
            rules.select_kaduri_images.output[0]]


def get_paper_comparison_inputs(wildcards):
    """compare_with_papers reads summary tables only: each enabled summary stage's tables, named
    by its `compared_as` after fields of paper_comparison.RunSummaries (N1, K2, K3, K4: summary,
    controls, per-category breakdown; the LLM judge's K2 summaries when it runs)."""
    return {name: results(path) for stage in STAGES if stage.compared_as and stage.enabled(config)
            for name, path in zip(stage.compared_as, stage.tables)}


def get_final_output():
    """What the default target asks for: every output of each enabled stage's target rules
    (vlminterp.workflow.registry: summary tables and figures, the effective config, the
    paper comparison, and the optional stages this config enables)."""
    return [path for stage in STAGES if stage.enabled(config)
            for rule in stage.targets for path in getattr(rules, rule).output]
