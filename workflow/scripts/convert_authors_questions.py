"""Rule convert_authors_questions: the authors' clean_questions.json as the (image_id, question) CSV the VQA stages read."""
from vlminterp.data.authors_data import questions_table
from vlminterp.io import atomic_path
from vlminterp.workflow.runtime import rule_context

with rule_context(snakemake.log[0]) as log:
    table = questions_table(snakemake.input[0])
    log.info("%d images with a question", len(table))
    with atomic_path(snakemake.output[0]) as tmp:
        table.to_csv(tmp, index=False)
