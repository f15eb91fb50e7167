# Data stage: the synthetic COCO-format shapes world, or COCO 2017 downloaded (annotations, then
# only the images the stages' selections need).


rule generate_world:
    output:
        directory(results("data/shapes")),
    params:
        spec=config["dataset"]["shapes"],
        seed=SEED,
    log:
        logs("generate_world"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/generate_world.py"


rule download_coco_annotations:
    localrule: True
    output:
        instances=f"{dataset_root()}/annotations/instances_{{split}}.json",
        captions=f"{dataset_root()}/annotations/captions_{{split}}.json",
    params:
        coco=DATASET["coco"],
    log:
        logs("download_coco_annotations_{split}"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/download_coco_annotations.py"


rule download_coco_images:
    localrule: True
    input:
        annotations=get_annotations(),
        selections=get_image_selections,
    output:
        manifest=f"{dataset_root()}/images/{{split}}.manifest.csv",
    params:
        coco=DATASET["coco"],
    log:
        logs("download_coco_images_{split}"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/download_coco_images.py"
