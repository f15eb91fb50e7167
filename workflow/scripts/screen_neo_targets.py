"""Rule screen_neo_targets: Neo et al.'s noising filter over the candidate targets (kept targets + screening table)."""
import pandas as pd

from vlminterp.data.coco import CocoDataset
from vlminterp.experiments.neo_common import CellSpec, PromptSpec
from vlminterp.experiments.neo_screening import ScreeningSpec, screen_targets
from vlminterp.io import read_table, write_table
from vlminterp.models.adapters import adapter_for
from vlminterp.models.loading import ModelSpec, load_model
from vlminterp.runtime import rule_context
from vlminterp.scoring.vocabulary import load_vocabulary
from vlminterp.specs import build_spec

params = snakemake.params
with rule_context(snakemake.log[0], threads=snakemake.threads, seed=params.seed):
    spec = build_spec(ScreeningSpec, params.screening, where="neo.screening", seed=params.seed)
    dataset = CocoDataset.load(params.dataset_dir, params.split)
    model, processor = load_model(ModelSpec(**params.model))
    exempt = pd.read_csv(snakemake.input.questions)["image_id"] if params.include_question_images else ()
    kept, screening = screen_targets(
        model, processor, adapter_for(model, processor), dataset, read_table(snakemake.input.candidates),
        prompts=build_spec(PromptSpec, params.prompts, where="neo.prompts"),
        vocabulary=load_vocabulary(params.vocabulary, categories=list(dataset.category_names().values())),
        cell_spec=build_spec(CellSpec, params.cells, where="neo.cells"), spec=spec,
        max_images=params.max_images, exempt=exempt)
    write_table(kept, snakemake.output.selection)
    write_table(screening, snakemake.output.screening)
