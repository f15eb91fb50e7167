"""Rule compare_with_papers: the papers' headline numbers beside this run's (paper_comparison.csv),
with a null control each, and their per-category breakdown (by_category.csv), joined from the
summary rules' tables."""
from vlminterp.experiments.paper_comparison import RunSummaries, by_category, paper_comparison
from vlminterp.io import read_table, write_table
from vlminterp.plots.tables import write_table_html
from vlminterp.workflow.runtime import rule_context

params, inputs = snakemake.params, snakemake.input
with rule_context(snakemake.log[0]):
    # the inputs are named after RunSummaries' fields (each summary stage's `compared_as` in the registry)
    summaries = RunSummaries(**{name: read_table(path) for name, path in inputs.items()},
                             judge_model=params.judge_model)
    comparison = paper_comparison(summaries, model=params.model, organism=params.organism)
    write_table(comparison, snakemake.output.comparison)
    breakdown = by_category(summaries)
    write_table(breakdown, snakemake.output.by_category)
    write_table_html(breakdown, snakemake.output.by_category_page,
                     title=f"Every headline number by category ({params.model})",
                     note="value: the headline's measure within one category, n its units, n_images its images. "
                          "Table: papers/by_category.csv.")
    # the page: the claim, the paper's number and this run's side by side first, then the control
    first = ["experiment", "claim", "relation", "paper_value", "value", "low", "high", "n", "control_value",
             "chance", "flag", "condition", "setting"]
    page = comparison[first + [c for c in comparison.columns if c not in first]]
    write_table_html(page, snakemake.output.page, title=f"The papers' headline numbers beside this run's ({params.model})",
                     note="paper_value: the paper's number (relation '>' = a lower bound, '~' = read off a figure, "
                          "empty = a claim in words; source: where the paper states it); value, low, high: this "
                          "run's, with its 95% bootstrap interval over images; control_value: the null control of "
                          "the same run, which must give chance; flag: a value not to be read as a finding. "
                          "Table: papers/paper_comparison.csv.")
