"""Rule judge_group_knockouts_llm (K2, optional): the LLM judge scores the knockout descriptions
(its summaries: rule summarize_group_knockouts_llm)."""
from pathlib import Path

from vlminterp.experiments.kaduri.knockout import LLMJudgeConfig, llm_judge_knockouts
from vlminterp.io import read_table, write_table
from vlminterp.workflow.runtime import rule_context
from vlminterp.scoring.vocabulary import load_vocabulary
from vlminterp.specs import build_spec

params = snakemake.params
with rule_context(snakemake.log[0], seed=params.seed):
    judge = build_spec(LLMJudgeConfig, params.judge, where="kaduri.llm_judge")
    Path(params.cache).parent.mkdir(parents=True, exist_ok=True)
    table = read_table(snakemake.input[0])
    judged = llm_judge_knockouts(table, judge.client_spec(params.cache), load_vocabulary(params.vocabulary))
    write_table(judged, snakemake.output.table)
