# The papers' headline numbers beside this run's (N1, K2-K4), with 95% intervals.


rule compare_with_papers:
    input:
        ablation=rules.gather_token_ablation.output[0],
        knockout=rules.plot_group_knockouts.output.summary,
        localization=rules.gather_localization.output[0],
        reprompt=rules.plot_reprompting.output.summary,
    output:
        table=results("papers/paper_comparison.csv"),
        page=report(results("papers/paper_comparison.html"), caption=caption("paper_comparison"),
                    category="Paper comparison"),
    params:
        model=config["model"]["pretrained"]["id"] if not uses_organism() else "shapes organism",
        organism=uses_organism(),
        seed=SEED,
    log:
        logs("compare_with_papers"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/compare_with_papers.py"
