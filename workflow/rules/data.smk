# Data stage: the synthetic COCO-format shapes world (COCO download: configs/ for real runs).


rule generate_world:
    output:
        directory(results("data/shapes")),
    params:
        spec=config["dataset"]["shapes"],
        seed=SEED,
    log:
        logs("generate_world"),
    script:
        "../scripts/generate_world.py"
