# Neo et al. N2: logit lens on visual tokens (top-k per position and layer, object vs background curves).


rule apply_logit_lens:
    input:
        **neo_stage_inputs(),
    output:
        topk=results("neo/logit_lens/shards/{shard}_topk.csv.gz"),
        scores=results("neo/logit_lens/shards/{shard}_scores.csv"),
    params:
        **neo_stage_params("apply_logit_lens"),
        spec=config["neo"]["logit_lens"],
    threads: model_threads(experiment=True)
    resources:
        **model_resources(),
    log:
        logs("apply_logit_lens/{shard}"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule gather_logit_lens_topk:
    localrule: True
    input:
        shard_outputs("neo/logit_lens/shards/{shard}_topk.csv.gz", neo_images()),
    output:
        results("neo/logit_lens/topk.csv.gz"),
    log:
        logs("gather_logit_lens_topk"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/gather_shards.py"


rule gather_logit_lens_scores:
    localrule: True
    input:
        shard_outputs("neo/logit_lens/shards/{shard}_scores.csv", neo_images()),
    output:
        results("neo/logit_lens/scores.csv"),
    log:
        logs("gather_logit_lens_scores"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/gather_shards.py"


rule summarize_logit_lens:
    localrule: True
    input:
        table=rules.gather_logit_lens_scores.output[0],
    output:
        by_category=report(results("neo/logit_lens/scores_by_category.csv"), caption=caption("neo_lens_by_category"),
                           category="Neo et al.", subcategory="N2 logit lens"),
        null_control=report(results("neo/logit_lens/null_control.csv"), caption=caption("neo_lens_null_control"),
                            category="Neo et al.", subcategory="N2 logit lens"),
        curves=results("neo/logit_lens/summary.csv"),
    params:
        seed=SEED,
        resamples=config["neo"]["bootstrap_resamples"],
    log:
        logs("summarize_logit_lens"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/run_stage.py"


rule plot_logit_lens:
    localrule: True
    input:
        summary=rules.summarize_logit_lens.output.curves,
        table=rules.gather_logit_lens_scores.output[0],
    output:
        png=figure("neo/logit_lens/lens_curves.png", "neo_lens_curves", "Neo et al.", "N2 logit lens"),
        pdf=results("neo/logit_lens/lens_curves.pdf"),
    params:
        kind="logit_lens",
    log:
        logs("plot_logit_lens"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/plot_neo.py"


rule write_logit_lens_pages:
    localrule: True
    input:
        topk=rules.gather_logit_lens_topk.output[0],
        scores=rules.gather_logit_lens_scores.output[0],
        selection=neo_selection(),
        cells=rules.map_object_cells.output[0],
        world=get_dataset_dir(),
    output:
        # each page (self-contained: its image is a data URI) is a report item of its own
        report(directory(results("neo/logit_lens/pages")), patterns=["image_{image_id}.html"],
               caption=caption("neo_lens_pages"), category="Neo et al.", subcategory="N2 logit lens"),
    params:
        dataset_dir=dataset_dir_of_input,
        split=config["neo"]["selection"]["split"],
        max_pages=config["neo"]["logit_lens"]["html_images"],
    log:
        logs("write_logit_lens_pages"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/write_logit_lens_pages.py"
