# The papers' headline numbers beside this run's (N1, K2-K4), with 95% intervals.

FINAL_OUTPUTS.append(results("paper_comparison.csv"))


rule compare_with_papers:
    input:
        ablation=results("neo/ablation/ablation.csv"),
        knockout=results("kaduri/knockout/summary.csv"),
        localization=results("kaduri/localization/peaks.csv"),
        reprompt=results("kaduri/reprompt/summary.csv"),
    output:
        report(results("paper_comparison.csv"), caption=caption("paper_comparison"), category="Paper comparison"),
    params:
        model=config["model"]["pretrained"]["id"] if not uses_organism() else "shapes organism",
        organism=uses_organism(),
        seed=SEED,
    log:
        logs("compare_with_papers"),
    script:
        "../scripts/compare_with_papers.py"
