# Kaduri et al. (K1-K4): the images every K stage reads, and the settings they share.
# Stages: kaduri_attention.smk (K1), kaduri_knockout.smk (K2), kaduri_localization.smk (K3),
# kaduri_reprompt.smk (K4); each per-image stage runs as shard jobs gathered into one table.


rule select_kaduri_images:
    localrule: True
    input:
        annotations=get_annotations(),
    output:
        results("kaduri/images.csv"),
    params:
        dataset_dir=dataset_dir_of_input,
        split=kaduri_split(),
        n_images=KADURI["n_images"],
        seed=SEED,
    log:
        logs("select_kaduri_images"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/select_kaduri_images.py"
