"""Rule compare_with_papers: the papers' headline numbers beside this run's (paper_comparison.csv),
with a null control each, and their per-category breakdown (by_category.csv)."""
from vlminterp.experiments.paper_comparison import RunTables, by_category, paper_comparison
from vlminterp.io import read_table, write_table
from vlminterp.runtime import rule_context

params, inputs = snakemake.params, snakemake.input
with rule_context(snakemake.log[0], seed=params.seed):
    tables = RunTables(ablation=read_table(inputs.ablation), knockout=read_table(inputs.knockout),
                       localization=read_table(inputs.localization), reprompt=read_table(inputs.reprompt),
                       knockout_llm=read_table(inputs.knockout_llm) if "knockout_llm" in inputs.keys() else None,
                       judge_model=params.judge_model)
    write_table(paper_comparison(tables, model=params.model, organism=params.organism, seed=params.seed),
                snakemake.output.comparison)
    write_table(by_category(tables, seed=params.seed), snakemake.output.by_category)
