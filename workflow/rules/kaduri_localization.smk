# K3 (Kaduri et al.): does the attention of a generated object word peak on the object?


rule localize_objects:
    input:
        world=get_dataset_dir(),
        images=rules.select_kaduri_images.output[0],
        model=get_model_dir(),
    output:
        results("kaduri/localization/shards/{shard}.csv"),
    wildcard_constraints:
        shard=r"\d+",
    params:
        session=kaduri_session(),
        spec=KADURI["localization"],
        images_per_shard=config["sharding"]["images_per_shard"],
        seed=SEED,
    threads: model_threads(experiment=True)
    resources:
        **model_resources(),
    log:
        logs("localize_objects/{shard}"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule gather_localization:
    localrule: True
    input:
        kaduri_shards("kaduri/localization/shards/{shard}.csv"),
    output:
        results("kaduri/localization/peaks.csv"),
    log:
        logs("gather_localization"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/gather_shards.py"


rule summarize_localization:
    localrule: True
    input:
        table=rules.gather_localization.output[0],
    output:
        report(results("kaduri/localization/summary.csv"), caption=caption("localization_summary"),
               category="Kaduri et al.", subcategory="K3 localization"),
        results("kaduri/localization/controls.csv"),
        results("kaduri/localization/by_category.csv"),
    params:
        band_width=KADURI["localization"]["band_width"],
        seed=SEED,
    log:
        logs("summarize_localization"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule plot_localization:
    localrule: True
    input:
        rules.summarize_localization.output[0],
    output:
        png=figure("kaduri/localization/accuracy.png", "localization", "Kaduri et al.", "K3 localization"),
        pdf=results("kaduri/localization/accuracy.pdf"),
    log:
        logs("plot_localization"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/plot_localization.py"
