# Neo et al. N3: attention blocking from the last position (and into the last image row), per layer window.


rule block_object_attention:
    input:
        **neo_stage_inputs(),
    output:
        results("neo/blocking/shards/{shard}.csv"),
    params:
        **neo_stage_params("block_object_attention"),
        spec=config["neo"]["blocking"],
    threads: model_threads(experiment=True)
    resources:
        **model_resources(),
    log:
        logs("block_object_attention/{shard}"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule gather_attention_blocking:
    localrule: True
    input:
        shard_outputs("neo/blocking/shards/{shard}.csv", neo_images()),
    output:
        results("neo/blocking/blocking.csv"),
    log:
        logs("gather_attention_blocking"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/gather_shards.py"


rule summarize_attention_blocking:
    localrule: True
    input:
        table=rules.gather_attention_blocking.output[0],
    output:
        results("neo/blocking/summary.csv"),
    params:
        seed=SEED,
        resamples=config["neo"]["bootstrap_resamples"],
    log:
        logs("summarize_attention_blocking"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule plot_attention_blocking:
    localrule: True
    input:
        summary=rules.summarize_attention_blocking.output[0],
        table=rules.gather_attention_blocking.output[0],
    output:
        png=figure("neo/blocking/blocking_drops.png", "neo_blocking_drops", "Neo et al.", "N3 attention blocking"),
        pdf=results("neo/blocking/blocking_drops.pdf"),
    params:
        kind="blocking",
    log:
        logs("plot_attention_blocking"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/plot_neo.py"
