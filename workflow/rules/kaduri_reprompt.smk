# K4 (Kaduri et al.): answer POPE-style yes/no questions from compressed caches of the describe prompt.


rule build_reprompt_questions:
    localrule: True
    input:
        annotations=get_annotations(),
        images=rules.select_kaduri_images.output[0],
    output:
        results("kaduri/reprompt/questions.csv"),
    params:
        dataset_dir=dataset_dir_of_input,
        split=kaduri_split(),
        questions_per_image=KADURI["reprompt"]["questions_per_image"],
        seed=SEED,
    log:
        logs("build_reprompt_questions"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/build_reprompt_questions.py"


rule answer_reprompt_questions:
    input:
        world=get_dataset_dir(),
        images=rules.select_kaduri_images.output[0],
        questions=rules.build_reprompt_questions.output[0],
        model=get_model_dir(),
    output:
        results("kaduri/reprompt/shards/{shard}.csv"),
    wildcard_constraints:
        shard=r"\d+",
    params:
        session=kaduri_session(),
        spec=KADURI["reprompt"],
        images_per_shard=config["sharding"]["images_per_shard"],
        seed=SEED,
    threads: model_threads(experiment=True)
    resources:
        **model_resources(),
    log:
        logs("answer_reprompt_questions/{shard}"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule gather_reprompt_answers:
    localrule: True
    input:
        kaduri_shards("kaduri/reprompt/shards/{shard}.csv"),
    output:
        results("kaduri/reprompt/answers.csv"),
    log:
        logs("gather_reprompt_answers"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/gather_shards.py"


rule summarize_reprompting:
    localrule: True
    input:
        table=rules.gather_reprompt_answers.output[0],
    output:
        report(results("kaduri/reprompt/summary.csv"), caption=caption("reprompt_summary"),
               category="Kaduri et al.", subcategory="K4 re-prompting"),
        results("kaduri/reprompt/controls.csv"),
        results("kaduri/reprompt/by_category.csv"),
    params:
        seed=SEED,
    log:
        logs("summarize_reprompting"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule plot_reprompting:
    localrule: True
    input:
        summary=rules.summarize_reprompting.output[0],
        answers=rules.gather_reprompt_answers.output[0],
    output:
        png=figure("kaduri/reprompt/accuracy.png", "reprompting", "Kaduri et al.", "K4 re-prompting"),
        pdf=results("kaduri/reprompt/accuracy.pdf"),
    log:
        logs("plot_reprompting"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/plot_reprompting.py"
