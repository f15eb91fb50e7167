# Neo et al. (N1-N3), shared data stage: target objects and their image-token cells, and the
# authors' released files (their VQA questions, their mean vectors) when neo.authors_data asks.
import re

from vlminterp.data.authors_data import AUTHORS_FILES


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
    conda:
        LIBRARY_ENV
    script:
        "../scripts/download_authors_file.py"


rule convert_authors_questions:
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
    input:
        annotations=get_annotations(),
        **neo_questions_input(),
    output:
        results("neo/selection.csv"),
    params:
        dataset_dir=dataset_dir_of_input,
        selection=config["neo"]["selection"],
        seed=SEED,
    log:
        logs("select_neo_targets"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/select_neo_targets.py"


rule map_object_cells:
    input:
        annotations=get_annotations(),
        selection=rules.select_neo_targets.output[0],
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
        "../scripts/map_object_cells.py"
