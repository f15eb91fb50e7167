# The papers' headline numbers beside this run's (N1, K2-K4), with 95% intervals, a null control
# each, and their per-category breakdown.


rule compare_with_papers:
    input:
        unpack(get_paper_comparison_inputs),
    output:
        comparison=results("papers/paper_comparison.csv"),
        page=report(results("papers/paper_comparison.html"), caption=caption("paper_comparison"),
                    category="Paper comparison"),
        by_category=report(results("papers/by_category.csv"), caption=caption("paper_by_category"),
                           category="Paper comparison"),
    params:
        model=config["model"]["pretrained"]["id"] if not uses_organism() else "shapes organism",
        organism=uses_organism(),
        judge_model=KADURI["llm_judge"]["model"],
        seed=SEED,
    log:
        logs("compare_with_papers"),
    conda:
        LIBRARY_ENV
    script:
        "../scripts/compare_with_papers.py"
