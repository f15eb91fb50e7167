"""Rule build_reprompt_questions (K4): POPE-style yes/no questions about the Kaduri images."""
from vlminterp.data.coco import CocoDataset
from vlminterp.data.questions import build_pope_questions
from vlminterp.experiments.kaduri.images import load_images_table
from vlminterp.io import write_table
from vlminterp.workflow.runtime import rule_context

params = snakemake.params
with rule_context(snakemake.log[0], seed=params.seed):
    dataset = CocoDataset.load(params.dataset_dir, params.split)
    image_ids = [int(i) for i in load_images_table(snakemake.input.images)["image_id"]]
    write_table(build_pope_questions(dataset, image_ids, params.questions_per_image, params.seed), snakemake.output[0])
