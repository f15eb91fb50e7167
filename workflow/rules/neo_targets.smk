# Neo et al. (N1-N3), shared data stage: target objects and their image-token cells, and the
# authors' released files (their VQA questions, their mean vectors) when neo.authors_data asks.
import re

from vlminterp.data.authors_data import AUTHORS_FILES


rule download_authors_file:
    localrule: True
    output:
        results("neo/authors/{name}"),
    wildcard_constraints:
        name="|".join(re.escape(name) for name in AUTHORS_FILES),
    params:
        base_url=AUTHORS_DATA["base_url"],
        retries=AUTHORS_DATA["retries"],
    log:
        logs("download_authors_file_{name}"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/download_authors_file.py"


rule convert_authors_questions:
    localrule: True
    input:
        results("neo/authors/clean_questions.json"),
    output:
        results("neo/authors_questions.csv"),
    log:
        logs("convert_authors_questions"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/convert_authors_questions.py"


rule select_neo_targets:
    localrule: True
    input:
        annotations=get_annotations(),
        **neo_questions_input(),
    output:
        NEO_CANDIDATES,
    params:
        dataset_dir=dataset_dir_of_input,
        selection=config["neo"]["selection"],
        screening=SCREENING,
        seed=SEED,
    log:
        logs("select_neo_targets"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/select_neo_targets.py"


if SCREENING["enabled"]:

    rule screen_neo_targets:
        input:
            candidates=rules.select_neo_targets.output[0],
            world=get_dataset_dir(),
            model=get_model_dir(),
            **neo_questions_input(),
        output:
            selection=results("neo/selection.csv"),
            screening=results("neo/screening.csv"),
        params:
            session=neo_session(NEO["selection"]["split"], "screen_neo_targets"),
            screening=SCREENING,
            prompts=NEO["prompts"],
            cells=NEO["cells"],
            max_images=NEO["selection"]["max_images"],
            exempt_questions=NEO["selection"]["include_question_images"],
            seed=SEED,
        threads: model_threads(experiment=True)
        resources:
            **model_resources(),
        log:
            logs("screen_neo_targets"),
        conda:
            LIBRARY_ENV
        script:
            "../scripts/run_stage.py"


rule map_object_cells:
    localrule: True
    input:
        annotations=get_annotations(),
        selection=neo_selection(),
        model=get_model_dir(),
    output:
        results("neo/cells.csv"),
    params:
        dataset_dir=dataset_dir_of_input,
        cells=config["neo"]["cells"],
        split=config["neo"]["selection"]["split"],
        model=model_spec(),
    log:
        logs("map_object_cells"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"
