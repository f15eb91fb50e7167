# Neo et al. N1: object-token ablation (generative, polling, VQA) against matched baselines.


rule select_mean_images:
    localrule: True
    input:
        annotations=get_annotations(),
        selection=rules.select_neo_targets.output[0],  # every candidate target: the mean images avoid them all
    output:
        results("neo/mean_images.csv"),
    params:
        dataset_dir=dataset_dir_of_input,
        mean=config["neo"]["mean"],
        selection_split=config["neo"]["selection"]["split"],
        seed=SEED,
    log:
        logs("select_mean_images"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/select_mean_images.py"


rule compute_mean_embedding:
    input:
        world=get_dataset_dir(),
        images=rules.select_mean_images.output[0],
        model=get_model_dir(),
    output:
        results("neo/mean_embedding.safetensors"),
    params:
        session=neo_session(NEO["mean"]["split"], "compute_mean_embedding"),
        mean=config["neo"]["mean"],
        seed=SEED,
    threads: model_threads(experiment=True)
    resources:
        **model_resources(),
    log:
        logs("compute_mean_embedding"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/compute_mean_embedding.py"


if AUTHORS_DATA["mean_vector"]:

    rule compare_mean_vectors:
        input:
            run=rules.compute_mean_embedding.output[0],
            authors=results(f"neo/authors/{AUTHORS_DATA['mean_vector']}"),
        output:
            comparison=results("neo/mean_comparison.json"),
            authors_mean=results("neo/authors_mean_embedding.safetensors"),
        log:
            logs("compare_mean_vectors"),
        conda:
            LIBRARY_ENV
        script:
            "../scripts/compare_mean_vectors.py"


rule ablate_object_tokens:
    input:
        **neo_stage_inputs(),
        mean=neo_ablation_mean(),
    output:
        results("neo/ablation/shards/{shard}.csv"),
    params:
        **neo_stage_params("ablate_object_tokens"),
        spec=config["neo"]["ablation"],
    threads: model_threads(experiment=True)
    resources:
        **model_resources(),
    log:
        logs("ablate_object_tokens/{shard}"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule gather_token_ablation:
    localrule: True
    input:
        shard_outputs("neo/ablation/shards/{shard}.csv", neo_images()),
    output:
        results("neo/ablation/ablation.csv"),
    log:
        logs("gather_token_ablation"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/gather_shards.py"


rule summarize_token_ablation:
    localrule: True
    input:
        table=rules.gather_token_ablation.output[0],
    output:
        results("neo/ablation/summary.csv"),
        results("neo/ablation/controls.csv"),
        results("neo/ablation/by_category.csv"),
    params:
        seed=SEED,
        resamples=config["neo"]["bootstrap_resamples"],
        vocabulary=neo_vocabulary(),
    log:
        logs("summarize_token_ablation"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule plot_token_ablation:
    localrule: True
    input:
        summary=rules.summarize_token_ablation.output[0],
        table=rules.gather_token_ablation.output[0],
    output:
        png=figure("neo/ablation/flip_rates.png", "neo_flip_rates", "Neo et al.", "N1 token ablation"),
        pdf=results("neo/ablation/flip_rates.pdf"),
    params:
        kind="ablation",
    log:
        logs("plot_token_ablation"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/plot_neo.py"
