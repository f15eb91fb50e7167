"""Rule compare_with_papers: the papers' headline numbers beside this run's (paper_comparison.csv)."""
from vlminterp.experiments.paper_comparison import RunTables, paper_comparison
from vlminterp.io import read_table, write_table
from vlminterp.plots.tables import write_table_html
from vlminterp.runtime import rule_context

params, inputs = snakemake.params, snakemake.input
with rule_context(snakemake.log[0], seed=params.seed):
    tables = RunTables(ablation=read_table(inputs.ablation), knockout=read_table(inputs.knockout),
                       localization=read_table(inputs.localization), reprompt=read_table(inputs.reprompt))
    comparison = paper_comparison(tables, model=params.model, organism=params.organism, seed=params.seed)
    write_table(comparison, snakemake.output.table)
    # the page: the claim, the paper's number and this run's side by side first; the details after
    first = ["experiment", "claim", "relation", "paper_value", "value", "low", "high", "n", "condition", "setting"]
    page = comparison[first + [c for c in comparison.columns if c not in first]]
    write_table_html(page, snakemake.output.page, title=f"The papers' headline numbers beside this run's ({params.model})",
                     note="paper_value: the paper's number (relation '>' = a lower bound, empty = a claim in words); "
                          "value, low, high: this run's, with its 95% bootstrap interval over n. "
                          "Table: papers/paper_comparison.csv.")
