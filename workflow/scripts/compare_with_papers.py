"""Rule compare_with_papers: the papers' headline numbers beside this run's (paper_comparison.csv),
with a null control each, and their per-category breakdown (by_category.csv)."""
from vlminterp.experiments.paper_comparison import RunTables, by_category, paper_comparison
from vlminterp.io import read_table, write_table
from vlminterp.plots.tables import write_table_html
from vlminterp.workflow.runtime import rule_context
from vlminterp.scoring.vocabulary import load_vocabulary

params, inputs = snakemake.params, snakemake.input
with rule_context(snakemake.log[0], seed=params.seed):
    # the inputs are named after RunTables' fields (each stage's `compared_as` in the registry)
    read = {name: read_table(path) for name, path in inputs.items()}
    # N1's vocabulary reads the generative control's descriptions: the stage's, extended (as the
    # stage extends it by the dataset's categories) by the targets' categories it scores
    vocabulary = load_vocabulary(params.vocabulary, categories=sorted(set(read["ablation"]["category"])))
    tables = RunTables(**read, judge_model=params.judge_model, vocabulary=vocabulary)
    comparison = paper_comparison(tables, model=params.model, organism=params.organism, seed=params.seed)
    write_table(comparison, snakemake.output.comparison)
    breakdown = by_category(tables, seed=params.seed)
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
