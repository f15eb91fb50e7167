"""Rule select_neo_targets: the images and target objects of N1-N3 (Neo et al.'s selection rules);
with the noising filter on, its candidates (`neo.screening.candidate_spec`)."""
import pandas as pd

from vlminterp.data.coco import CocoDataset, SelectionSpec, select_targets
from vlminterp.experiments.neo.screening import ScreeningSpec, candidate_spec
from vlminterp.io import write_table
from vlminterp.workflow.runtime import rule_context
from vlminterp.specs import build_spec

with rule_context(snakemake.log[0], seed=snakemake.params.seed):
    spec = build_spec(SelectionSpec, snakemake.params.selection, where="neo.selection", seed=snakemake.params.seed)
    spec = candidate_spec(spec, build_spec(ScreeningSpec, snakemake.params.screening, where="neo.screening",
                                           seed=snakemake.params.seed))
    dataset = CocoDataset.load(snakemake.params.dataset_dir, spec.split)
    # Neo et al.'s question images are selected whenever they qualify (their VQA and N3 images).
    required = pd.read_csv(snakemake.input.questions)["image_id"] if spec.include_question_images else ()
    write_table(select_targets(dataset, spec, required), snakemake.output[0])
