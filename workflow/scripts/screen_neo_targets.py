"""Rule screen_neo_targets: Neo et al.'s noising filter over the candidate targets (kept targets + screening table)."""
from vlminterp.experiments import stages
from vlminterp.io import write_table
from vlminterp.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    kept, screening = stages.screen_targets(
        session=params.session, screening=params.screening, prompts=params.prompts, cells=params.cells,
        candidates=snakemake.input.candidates, max_images=params.max_images, seed=params.seed,
        questions=snakemake.input.get("questions"), exempt_questions=params.include_question_images)
    write_table(kept, snakemake.output.selection)
    write_table(screening, snakemake.output.screening)
