# Neo et al. (N1-N3), shared data stage: target objects and their image-token cells, and the
# authors' released files (their VQA questions, their mean vectors) when neo.authors_data asks.
import re

from vlminterp.data.authors_data import AUTHORS_FILES

AUTHORS_DATA = config["neo"]["authors_data"]


def neo_vocabulary():
    """Synonym vocabulary of the Neo stages: neo.vocabulary, or the one named after the dataset kind."""
    return config["neo"]["vocabulary"] or config["dataset"]["kind"]


def neo_images():
    """Most targets the Neo stages study (fixes their number of shards)."""
    return config["neo"]["selection"]["max_images"]



def neo_questions_file():
    """The VQA questions file: the authors' questions converted, the user's file, or None (template)."""
    if AUTHORS_DATA["questions"]:
        return results("neo/authors_questions.csv")
    return config["neo"]["prompts"]["vqa_questions_file"]


def neo_questions_input():
    """{"questions": file} when the run asks questions from a file (so stages rerun when it changes)."""
    return {"questions": neo_questions_file()} if neo_questions_file() else {}


def neo_stage_params():
    """Params every per-image Neo stage passes to vlminterp.experiments.neo_common.load_stage_inputs."""
    return dict(model=model_spec(), dataset_dir=dataset_root(), split=config["neo"]["selection"]["split"], cells=config["neo"]["cells"],
                prompts={**config["neo"]["prompts"], "vqa_questions_file": neo_questions_file()},
                vocabulary=neo_vocabulary(), images_per_shard=config["sharding"]["images_per_shard"], seed=SEED)


def neo_stage_inputs():
    """Inputs every per-image Neo stage reads."""
    return dict(world=get_dataset_dir(), selection=results("neo/selection.csv"), cells=results("neo/cells.csv"),
                model=get_model_dir(), **neo_questions_input())


if AUTHORS_DATA["questions"] and config["neo"]["prompts"]["vqa_questions_file"]:
    raise WorkflowError("neo.authors_data.questions supplies the VQA questions file; set "
                        "neo.prompts.vqa_questions_file to null (it is "
                        f"{config['neo']['prompts']['vqa_questions_file']!r})")
for key, needs in (("neo.selection.include_question_images", config["neo"]["selection"]["include_question_images"]),
                   ("neo.prompts.vqa_images: with_question", config["neo"]["prompts"]["vqa_images"] == "with_question")):
    if needs and not neo_questions_file():
        raise WorkflowError(f"{key} needs a questions file: set neo.authors_data.questions or "
                            "neo.prompts.vqa_questions_file")


SCREENING = config["neo"]["screening"]
# With Neo et al.'s noising filter on, select_neo_targets writes the candidates and
# screen_neo_targets the selection; every COCO image a candidate needs is downloaded.
NEO_CANDIDATES = results("neo/candidates.csv") if SCREENING["enabled"] else results("neo/selection.csv")
IMAGE_SELECTIONS.append(NEO_CANDIDATES)

if not uses_shapes():
    for key in ("selection", "mean"):
        if config["neo"][key]["split"] != DATASET["split"]:
            raise WorkflowError(
                f"neo.{key}.split={config['neo'][key]['split']!r} must equal dataset.split="
                f"{DATASET['split']!r} for COCO: only that split's images are downloaded")


localrules:
    download_authors_file,
    convert_authors_questions,


rule download_authors_file:
    output:
        results("neo/authors/{name}"),
    wildcard_constraints:
        name="|".join(re.escape(name) for name in AUTHORS_FILES),
    params:
        base_url=AUTHORS_DATA["base_url"],
        retries=AUTHORS_DATA["retries"],
    log:
        logs("download_authors_file_{name}"),
    script:
        "../scripts/download_authors_file.py"


rule convert_authors_questions:
    input:
        results("neo/authors/clean_questions.json"),
    output:
        results("neo/authors_questions.csv"),
    log:
        logs("convert_authors_questions"),
    script:
        "../scripts/convert_authors_questions.py"


rule select_neo_targets:
    input:
        annotations=get_annotations(),
        **neo_questions_input(),
    output:
        NEO_CANDIDATES,
    params:
        dataset_dir=dataset_root(),
        selection=config["neo"]["selection"],
        screening=SCREENING,
        seed=SEED,
    log:
        logs("select_neo_targets"),
    script:
        "../scripts/select_neo_targets.py"


if SCREENING["enabled"]:
    FINAL_OUTPUTS.append(results("neo/screening.csv"))

    rule screen_neo_targets:
        input:
            candidates=NEO_CANDIDATES,
            world=get_dataset_dir(),
            model=get_model_dir(),
            **neo_questions_input(),
        output:
            selection=results("neo/selection.csv"),
            screening=results("neo/screening.csv"),
        params:
            model=model_spec(),
            dataset_dir=dataset_root(),
            split=config["neo"]["selection"]["split"],
            cells=config["neo"]["cells"],
            prompts={**config["neo"]["prompts"], "vqa_questions_file": neo_questions_file()},
            vocabulary=neo_vocabulary(),
            screening=SCREENING,
            max_images=config["neo"]["selection"]["max_images"],
            include_question_images=config["neo"]["selection"]["include_question_images"],
            seed=SEED,
        threads: model_threads(experiment=True)
        resources:
            **model_resources(),
        log:
            logs("screen_neo_targets"),
        script:
            "../scripts/screen_neo_targets.py"


rule map_object_cells:
    input:
        annotations=get_annotations(),
        selection=results("neo/selection.csv"),
        model=get_model_dir(),
    output:
        results("neo/cells.csv"),
    params:
        dataset_dir=dataset_root(),
        cells=config["neo"]["cells"],
        split=config["neo"]["selection"]["split"],
        model=model_spec(),
    log:
        logs("map_object_cells"),
    script:
        "../scripts/map_object_cells.py"
