# Kaduri et al. (K1-K4): the images every K stage reads, and the settings they share.
# Stages: kaduri_attention.smk (K1), kaduri_knockout.smk (K2), kaduri_localization.smk (K3),
# kaduri_reprompt.smk (K4); each per-image stage runs as shard jobs gathered into one table.

KADURI = config["kaduri"]
# COCO runs download only the images some stage selected: ours are in kaduri/images.csv.
IMAGE_SELECTIONS.append(results("kaduri/images.csv"))


def kaduri_split():
    """Dataset split of the K stages: kaduri.split, else dataset.split."""
    return KADURI["split"] or DATASET["split"]


def kaduri_shards(pattern):
    """The shard files of a per-image K stage (n_images split by sharding.images_per_shard)."""
    return shard_outputs(pattern, KADURI["n_images"])


def kaduri_vocabulary():
    """Synonym vocabulary of the judges: kaduri.vocabulary, else the dataset kind's (shapes, coco)."""
    return KADURI["vocabulary"] or config["dataset"]["kind"]


def kaduri_session():
    """The K stages' session: keyword arguments of vlminterp.experiments.session.StageConfig."""
    return dict(model=model_spec(), dataset_dir=dataset_root(), split=kaduri_split(),
                batch_size=KADURI["batch_size"], vocabulary=kaduri_vocabulary(),
                prompt=dict(text=KADURI["prompt"], system_prompt=KADURI["system_prompt"],
                            geometry=KADURI["geometry"], max_new_tokens=KADURI["max_new_tokens"]))



rule select_kaduri_images:
    input:
        annotations=get_annotations(),
    output:
        results("kaduri/images.csv"),
    params:
        dataset_dir=dataset_root(),
        split=kaduri_split(),
        n_images=KADURI["n_images"],
        seed=SEED,
    log:
        logs("select_kaduri_images"),
    script:
        "../scripts/select_kaduri_images.py"
