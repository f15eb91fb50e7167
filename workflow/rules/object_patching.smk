# Cross-image activation patching of object tokens on the Neo targets: does image B's answer become
# image A's object when B's object tokens carry A's at layer l? (vlminterp.experiments.object_patching)


rule patch_object_tokens:
    input:
        **neo_stage_inputs(),
    output:
        results("patching/patching.csv"),
    params:
        session=neo_session(NEO["selection"]["split"], "patch_object_tokens"),
        prompts=NEO["prompts"],
        spec=config["patching"],
        seed=SEED,
    threads: model_threads(experiment=True)
    resources:
        **model_resources(),
    log:
        logs("patch_object_tokens"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule summarize_object_patching:
    localrule: True
    input:
        table=rules.patch_object_tokens.output[0],
    output:
        summary=results("patching/summary.csv"),
        by_category=results("patching/by_category.csv"),
    params:
        seed=SEED,
    log:
        logs("summarize_object_patching"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule plot_object_patching:
    localrule: True
    input:
        rules.summarize_object_patching.output.summary,
    output:
        png=figure("patching/patching.png", "object_patching", "Object patching"),
        pdf=results("patching/patching.pdf"),
    log:
        logs("plot_object_patching"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/plot_object_patching.py"
