# K2 (Kaduri et al.): attention knockout between token groups; descriptions scored by the offline
# judge (and, when kaduri.llm_judge.enabled, by an LLM judge in its own rule).


rule run_group_knockouts:
    input:
        world=get_dataset_dir(),
        images=rules.select_kaduri_images.output[0],
        model=get_model_dir(),
    output:
        results("kaduri/knockout/shards/{shard}.csv"),
    wildcard_constraints:
        shard=r"\d+",
    params:
        session=kaduri_session(),
        spec=KADURI["knockout"],
        images_per_shard=config["sharding"]["images_per_shard"],
        seed=SEED,
    threads: model_threads(experiment=True)
    resources:
        **model_resources(),
    log:
        logs("run_group_knockouts/{shard}"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule gather_group_knockouts:
    localrule: True
    input:
        kaduri_shards("kaduri/knockout/shards/{shard}.csv"),
    output:
        results("kaduri/knockout/descriptions.csv"),
    log:
        logs("gather_group_knockouts"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/gather_shards.py"


rule summarize_group_knockouts:
    localrule: True
    input:
        table=rules.gather_group_knockouts.output[0],
        annotations=get_annotations(),
    output:
        report(results("kaduri/knockout/summary.csv"), caption=caption("knockout_summary"),
               category="Kaduri et al.", subcategory="K2 knockout"),
        results("kaduri/knockout/controls.csv"),
        results("kaduri/knockout/by_category.csv"),
    params:
        dataset_dir=dataset_dir_of_input,
        split=kaduri_split(),
        seed=SEED,
    log:
        logs("summarize_group_knockouts"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule plot_group_knockouts:
    localrule: True
    input:
        rules.summarize_group_knockouts.output[0],
    output:
        conditions=figure("kaduri/knockout/conditions.png", "knockout_conditions", "Kaduri et al.", "K2 knockout"),
        start_layer=figure("kaduri/knockout/start_layer.png", "knockout_start_layer", "Kaduri et al.",
                           "K2 knockout"),
        windows=figure("kaduri/knockout/windows.png", "knockout_windows", "Kaduri et al.", "K2 knockout"),
        pdfs=[results(f"kaduri/knockout/{name}.pdf") for name in ("conditions", "start_layer", "windows")],
    log:
        logs("plot_group_knockouts"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/plot_group_knockouts.py"


rule judge_group_knockouts_llm:
    input:
        rules.gather_group_knockouts.output[0],
    output:
        table=results("kaduri/knockout/llm_judge.csv"),
    params:
        judge=KADURI["llm_judge"],
        cache=results(KADURI["llm_judge"]["cache"]),
        vocabulary=kaduri_vocabulary(),
        seed=SEED,
    log:
        logs("judge_group_knockouts_llm"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/judge_group_knockouts_llm.py"


rule summarize_group_knockouts_llm:
    localrule: True
    input:
        table=rules.judge_group_knockouts_llm.output.table,
    output:
        report(results("kaduri/knockout/llm_judge_summary.csv"), caption=caption("knockout_llm_judge"),
               category="Kaduri et al.", subcategory="K2 knockout"),
        results("kaduri/knockout/llm_judge_controls.csv"),
        results("kaduri/knockout/llm_judge_by_category.csv"),
    params:
        seed=SEED,
    log:
        logs("summarize_group_knockouts_llm"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"
