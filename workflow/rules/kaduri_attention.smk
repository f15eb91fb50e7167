# K1 (Kaduri et al.): share of the generated tokens' attention per layer and token group.

FINAL_OUTPUTS.extend([
    results("kaduri/attention/summary.csv"),
    results("kaduri/attention/fractions.png"),
])


rule measure_attention_fractions:
    input:
        world=get_dataset_dir(),
        images=results("kaduri/images.csv"),
        model=get_model_dir(),
    output:
        results("kaduri/attention/shards/{shard}.csv"),
    wildcard_constraints:
        shard=r"\d+",
    params:
        session=kaduri_session(),
        spec=KADURI["attention"],
        images_per_shard=config["sharding"]["images_per_shard"],
        seed=SEED,
    threads: model_threads(experiment=True)
    resources:
        **model_resources(),
    log:
        logs("measure_attention_fractions/{shard}"),
    script:
        "../scripts/measure_attention_fractions.py"


rule gather_attention_fractions:
    input:
        kaduri_shards("kaduri/attention/shards/{shard}.csv"),
    output:
        results("kaduri/attention/fractions.csv"),
    log:
        logs("gather_attention_fractions"),
    script:
        "../scripts/gather_shards.py"


rule plot_attention_fractions:
    input:
        results("kaduri/attention/fractions.csv"),
    output:
        summary=report(results("kaduri/attention/summary.csv"), caption=caption("attention_summary"),
                       category="Kaduri et al.", subcategory="K1 attention fractions"),
        png=figure("kaduri/attention/fractions.png", "attention_fractions", "Kaduri et al.",
                   "K1 attention fractions"),
        pdf=results("kaduri/attention/fractions.pdf"),
    params:
        seed=SEED,
    log:
        logs("plot_attention_fractions"),
    script:
        "../scripts/plot_attention_fractions.py"
