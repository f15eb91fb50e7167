# The papers' headline numbers beside this run's (N1, K2-K4), with 95% intervals, a null control
# each, and their per-category breakdown: joined from the summary rules' tables (the registry's
# `compared_as`), never from a gathered per-image table.


rule compare_with_papers:
    localrule: True
    input:
        unpack(get_paper_comparison_inputs),
    output:
        comparison=results("papers/paper_comparison.csv"),
        page=report(results("papers/paper_comparison.html"), caption=caption("paper_comparison"),
                    category="Paper comparison"),
        by_category=results("papers/by_category.csv"),
        by_category_page=report(results("papers/by_category.html"), caption=caption("paper_by_category"),
                                category="Per-category breakdown"),
    params:
        model=config["model"]["pretrained"]["id"] if not uses_organism() else "shapes organism",
        organism=uses_organism(),
        judge_model=KADURI["llm_judge"]["model"],
    log:
        logs("compare_with_papers"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/compare_with_papers.py"


# Do the methods find a planted mechanism? (issue #24): each method's measured value beside what an
# organism's planted routing (model.organism.routing) makes true by construction.
rule validate_methods:
    localrule: True
    input:
        ablation=rules.gather_token_ablation.output[0],
        blocking=rules.gather_attention_blocking.output[0],
        knockout=rules.summarize_group_knockouts.output[0],
        descriptions=rules.gather_group_knockouts.output[0],
        localization=rules.gather_localization.output[0],
        reprompt=rules.summarize_reprompting.output[0],
    output:
        report(results("papers/method_validation.csv"), caption=caption("method_validation"), category="Paper comparison"),
    params:
        routing=planted_routing(),
        seed=SEED,
    log:
        logs("validate_methods"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/validate_methods.py"
