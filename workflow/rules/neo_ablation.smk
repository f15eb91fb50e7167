# Neo et al. N1: object-token ablation (generative, polling, VQA) against matched baselines.

FINAL_OUTPUTS.extend([
    results("neo/ablation/ablation.csv"),
    results("neo/ablation/flip_rates.png"),
])


IMAGE_SELECTIONS.append(results("neo/mean_images.csv"))


rule select_mean_images:
    input:
        annotations=get_annotations(),
        selection=NEO_CANDIDATES,  # with the noising filter: every candidate (the filter needs the images first)
    output:
        results("neo/mean_images.csv"),
    params:
        dataset_dir=dataset_root(),
        mean=config["neo"]["mean"],
        selection_split=config["neo"]["selection"]["split"],
        seed=SEED,
    log:
        logs("select_mean_images"),
    script:
        "../scripts/select_mean_images.py"


rule compute_mean_embedding:
    input:
        world=get_dataset_dir(),
        images=results("neo/mean_images.csv"),
        model=get_model_dir(),
    output:
        results("neo/mean_embedding.safetensors"),
    params:
        model=model_spec(),
        dataset_dir=dataset_root(),
        mean=config["neo"]["mean"],
        geometry=config["neo"]["cells"]["geometry"],
        seed=SEED,
    threads: model_threads(experiment=True)
    resources:
        **model_resources(),
    log:
        logs("compute_mean_embedding"),
    script:
        "../scripts/compute_mean_embedding.py"


if config["neo"]["ablation"]["mean_vector"] == "authors" and not AUTHORS_DATA["mean_vector"]:
    raise WorkflowError("neo.ablation.mean_vector: authors needs neo.authors_data.mean_vector (the authors' "
                        "file for this model; they released one for LLaVA-1.5-7B and one for LLaVA-Phi-3-mini)")

if AUTHORS_DATA["mean_vector"]:
    FINAL_OUTPUTS.append(results("neo/mean_comparison.json"))

    rule compare_mean_vectors:
        input:
            run=results("neo/mean_embedding.safetensors"),
            authors=results(f"neo/authors/{AUTHORS_DATA['mean_vector']}"),
        output:
            comparison=results("neo/mean_comparison.json"),
            authors_mean=results("neo/authors_mean_embedding.safetensors"),
        log:
            logs("compare_mean_vectors"),
        script:
            "../scripts/compare_mean_vectors.py"


def neo_ablation_mean():
    """The mean the ablation replaces embeddings with: this run's, or the authors' (neo.ablation.mean_vector)."""
    if config["neo"]["ablation"]["mean_vector"] == "authors":
        return results("neo/authors_mean_embedding.safetensors")
    return results("neo/mean_embedding.safetensors")


rule ablate_object_tokens:
    input:
        **neo_stage_inputs(),
        mean=neo_ablation_mean(),
    output:
        results("neo/ablation/shards/{shard}.csv"),
    params:
        **neo_stage_params(),
        ablation=config["neo"]["ablation"],
    threads: model_threads(experiment=True)
    resources:
        **model_resources(),
    log:
        logs("ablate_object_tokens/{shard}"),
    script:
        "../scripts/ablate_object_tokens.py"


rule gather_token_ablation:
    input:
        shard_outputs("neo/ablation/shards/{shard}.csv", neo_images()),
    output:
        results("neo/ablation/ablation.csv"),
    log:
        logs("gather_token_ablation"),
    script:
        "../scripts/gather_shards.py"


rule plot_token_ablation:
    input:
        results("neo/ablation/ablation.csv"),
    output:
        png=figure("neo/ablation/flip_rates.png", "neo_flip_rates", "Neo et al.", "N1 token ablation"),
        pdf=results("neo/ablation/flip_rates.pdf"),
    params:
        kind="ablation",
        seed=SEED,
        resamples=config["neo"]["bootstrap_resamples"],
    log:
        logs("plot_token_ablation"),
    script:
        "../scripts/plot_neo.py"
