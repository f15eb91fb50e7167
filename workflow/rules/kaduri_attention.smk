# K1 (Kaduri et al.): share of the generated tokens' attention per layer and token group.


rule measure_attention_fractions:
    input:
        world=get_dataset_dir(),
        images=rules.select_kaduri_images.output[0],
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
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule gather_attention_fractions:
    localrule: True
    input:
        kaduri_shards("kaduri/attention/shards/{shard}.csv"),
    output:
        results("kaduri/attention/fractions.csv"),
    log:
        logs("gather_attention_fractions"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/gather_shards.py"


rule summarize_attention_fractions:
    localrule: True
    input:
        table=rules.gather_attention_fractions.output[0],
    output:
        report(results("kaduri/attention/summary.csv"), caption=caption("attention_summary"),
               category="Kaduri et al.", subcategory="K1 attention fractions"),
    params:
        seed=SEED,
    log:
        logs("summarize_attention_fractions"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule plot_attention_fractions:
    localrule: True
    input:
        rules.summarize_attention_fractions.output[0],
    output:
        png=figure("kaduri/attention/fractions.png", "attention_fractions", "Kaduri et al.",
                   "K1 attention fractions"),
        pdf=results("kaduri/attention/fractions.pdf"),
    log:
        logs("plot_attention_fractions"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/plot_attention_fractions.py"
