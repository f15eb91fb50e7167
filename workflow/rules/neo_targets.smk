# Neo et al. (N1-N3), shared data stage: target objects and their image-token cells.


def neo_vocabulary():
    """Synonym vocabulary of the Neo stages: neo.vocabulary, or the one named after the dataset kind."""
    return config["neo"]["vocabulary"] or config["dataset"]["kind"]


def neo_images():
    """Most targets the Neo stages study (fixes their number of shards)."""
    return config["neo"]["selection"]["max_images"]



def neo_stage_params():
    """Params every per-image Neo stage passes to vlminterp.experiments.neo_common.load_stage_inputs."""
    return dict(model=model_spec(), dataset_dir=dataset_root(), split=config["neo"]["selection"]["split"], cells=config["neo"]["cells"],
                prompts=config["neo"]["prompts"], vocabulary=neo_vocabulary(),
                images_per_shard=config["sharding"]["images_per_shard"], seed=SEED)


def neo_stage_inputs():
    """Inputs every per-image Neo stage reads."""
    return dict(world=get_dataset_dir(), selection=results("neo/selection.csv"), cells=results("neo/cells.csv"),
                model=get_model_dir())


IMAGE_SELECTIONS.append(results("neo/selection.csv"))

if not uses_shapes():
    for key in ("selection", "mean"):
        if config["neo"][key]["split"] != DATASET["split"]:
            raise WorkflowError(
                f"neo.{key}.split={config['neo'][key]['split']!r} must equal dataset.split="
                f"{DATASET['split']!r} for COCO: only that split's images are downloaded")


rule select_neo_targets:
    input:
        annotations=get_annotations(),
    output:
        results("neo/selection.csv"),
    params:
        dataset_dir=dataset_root(),
        selection=config["neo"]["selection"],
        seed=SEED,
    log:
        logs("select_neo_targets"),
    script:
        "../scripts/select_neo_targets.py"


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
