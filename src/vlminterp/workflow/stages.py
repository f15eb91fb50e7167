"""What each rule script that runs the model or summarizes a stage calls: plain values in (paths,
config sections as dicts), a table out. No Snakemake object enters the library; the rule's `params:` hold the config
sections whole, and each section becomes its spec dataclass here (`specs.build_spec`).

    table = stages.group_knockouts(session=params.session, spec=params.spec, images="…/images.csv",
                                   shard="000", images_per_shard=100)

`session`: the keyword arguments of `experiments.shared.session.StageConfig` (model: ModelSpec's; dataset
directory and split; prompt: DescribePrompt's; vocabulary; batch_size), built by the rules
(`kaduri_session()`, `neo_session()` in workflow/rules). Per-image stages run on one shard of
their rows (`sharding.shard_rows`).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from vlminterp.io import read_table
from vlminterp.workflow.sharding import shard_rows
from vlminterp.specs import build_spec

if TYPE_CHECKING:  # the session loads torch and transformers: imported by the stages that run a model
    from vlminterp.experiments.shared.session import Session

PathLike = str | os.PathLike
Section = Mapping[str, Any]


def open_session(session: Section, stage: str, batch_size: int | None = None) -> Session:
    """The session of a stage from StageConfig's keyword arguments; its engine, the stage's only
    one, runs `batch_size` rows at most (the stage's spec.batch_size; default: the session's)."""
    from vlminterp.experiments.shared.session import Session, StageConfig

    sized = {"batch_size": batch_size} if batch_size is not None else {}
    return Session.open(build_spec(StageConfig, {**session, "stage": stage, **sized}, where="session"))


# ---- Neo et al. (N1-N3) ---------------------------------------------------------------------------
def object_cells(*, model: Section, dataset_dir: PathLike, split: str, cells: Section,
                 selection: PathLike) -> pd.DataFrame:
    """Rule map_object_cells: the cell table of the selected targets (`experiments.shared.cells.map_object_cells`),
    from the model's geometry only (no weights loaded)."""
    from vlminterp.data.coco import CocoDataset
    from vlminterp.experiments.shared.cells import CellSpec, map_object_cells
    from vlminterp.models.loading import ModelSpec, load_adapter

    spec = build_spec(CellSpec, cells, where="neo.cells")
    adapter = load_adapter(build_spec(ModelSpec, model, where="model"), weights=False)
    return map_object_cells(CocoDataset.load(dataset_dir, split), read_table(selection), adapter, spec)


def mean_embedding(*, session: Section, mean: Section, images: PathLike, output: PathLike) -> None:
    """Rule compute_mean_embedding: the streaming mean of `images` (neo.mean; the session opens
    the split they come from), written to `output`."""
    import logging

    from vlminterp.experiments.neo.mean_embedding import MeanSpec, compute_mean_embedding, save_mean_embedding
    from vlminterp.batching import AdaptiveBatch

    spec = build_spec(MeanSpec, mean, where="neo.mean")
    opened = open_session(session, "mean embedding")
    image_ids = [int(i) for i in read_table(images)["image_id"]]
    batches = AdaptiveBatch(spec.batch_size, "mean embedding")
    vector, count = compute_mean_embedding(opened, image_ids, batch_size=batches)
    logging.getLogger(__name__).info("mean of %d vectors from %d images of split %s", count, len(image_ids), spec.split)
    save_mean_embedding(vector, count, image_ids, output, batching=batches.columns())


def screen_targets(*, session: Section, screening: Section, prompts: Section, cells: Section, candidates: PathLike,
                   max_images: int | None, seed: int, questions: PathLike | None = None,
                   exempt_questions: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rule screen_neo_targets: Neo et al.'s noising filter over the candidates, (kept targets,
    screening table); the images of the questions file are exempt when `exempt_questions`
    (neo.selection.include_question_images)."""
    from vlminterp.experiments.neo.screening import ScreeningSpec, screen_targets as run
    from vlminterp.experiments.shared.cells import CellSpec

    spec = build_spec(ScreeningSpec, screening, where="neo.screening", seed=seed)
    exempt = read_table(questions)["image_id"] if exempt_questions and questions else ()
    return run(open_session(session, "N1 noising filter"), read_table(candidates), spec,
               prompts=_prompts(prompts, questions), cell_spec=build_spec(CellSpec, cells, where="neo.cells"),
               max_images=max_images, exempt=exempt)


def _neo_shard(session: Section, stage: str, selection: PathLike, cells: PathLike, shard: str, images_per_shard: int,
               batch_size: int | None = None):
    """(session, this shard's targets, their cells by image) of a per-image Neo stage."""
    from vlminterp.experiments.shared.cells import cells_by_image

    targets = shard_rows(read_table(selection), shard, images_per_shard)
    table = read_table(cells)
    return (open_session(session, stage, batch_size), targets,
            cells_by_image(table[table["image_id"].isin(targets["image_id"])]))


def _prompts(prompts: Section, questions: PathLike | None):
    """neo.prompts as a PromptSpec; `questions`, the VQA questions file the run asks from (the
    stage's input: neo.prompts.vqa_questions_file, or the authors' questions converted when
    neo.authors_data.questions), replaces the section's file."""
    from vlminterp.experiments.neo.prompts import PromptSpec

    return build_spec(PromptSpec, prompts, where="neo.prompts",
                      **({"vqa_questions_file": str(questions)} if questions else {}))


def token_ablation(*, session: Section, spec: Section, prompts: Section, selection: PathLike, cells: PathLike,
                   mean: PathLike, shard: str, images_per_shard: int, seed: int,
                   questions: PathLike | None = None) -> pd.DataFrame:
    """Rule ablate_object_tokens: N1 on one shard of the targets."""
    from vlminterp.experiments.neo.mean_embedding import load_mean_embedding
    from vlminterp.experiments.neo.ablation import AblationSpec, run_token_ablation

    ablation = build_spec(AblationSpec, spec, where="neo.ablation", seed=seed)
    opened, targets, target_cells = _neo_shard(session, "N1 token ablation", selection, cells, shard, images_per_shard,
                                               ablation.batch_size)
    return run_token_ablation(opened, targets, ablation, cells=target_cells, prompts=_prompts(prompts, questions),
                              mean=load_mean_embedding(mean))


def logit_lens(*, session: Section, spec: Section, prompts: Section, selection: PathLike, cells: PathLike, shard: str,
               images_per_shard: int, questions: PathLike | None = None,
               seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rule apply_logit_lens: N2 on one shard of the targets, (topk, scores). The null control's
    labels are the whole selection's (targets with a visible cell) permuted with `seed`."""
    from vlminterp.experiments.neo.logit_lens import LensSpec, permuted_labels, run_logit_lens

    lens = build_spec(LensSpec, spec, where="neo.logit_lens")
    table, cell_table = read_table(selection), read_table(cells)
    excluded = cell_table.loc[cell_table["excluded"].fillna("").astype(str) != "", "image_id"]
    null_labels = permuted_labels(table[~table["image_id"].isin(excluded)], seed)
    opened, targets, target_cells = _neo_shard(session, "N2 logit lens", selection, cells, shard, images_per_shard)
    return run_logit_lens(opened, targets, lens, cells=target_cells, prompts=_prompts(prompts, questions),
                          null_labels=null_labels)


def attention_blocking(*, session: Section, spec: Section, prompts: Section, selection: PathLike, cells: PathLike,
                       shard: str, images_per_shard: int, questions: PathLike | None = None) -> pd.DataFrame:
    """Rule block_object_attention: N3 on one shard of the targets."""
    from vlminterp.experiments.neo.blocking import BlockingSpec, run_attention_blocking

    blocking = build_spec(BlockingSpec, spec, where="neo.blocking")
    opened, targets, target_cells = _neo_shard(session, "N3 attention blocking", selection, cells, shard,
                                               images_per_shard, blocking.batch_size)
    return run_attention_blocking(opened, targets, blocking, cells=target_cells,
                                  prompts=_prompts(prompts, questions))


# ---- Kaduri et al. (K1-K4) ------------------------------------------------------------------------
def _kaduri_shard(session: Section, stage: str, images: PathLike, shard: str, images_per_shard: int):
    from vlminterp.experiments.kaduri.images import load_images_table

    return open_session(session, stage), shard_rows(load_images_table(images), shard, images_per_shard)


def attention_fractions(*, session: Section, spec: Section, images: PathLike, shard: str,
                        images_per_shard: int) -> pd.DataFrame:
    """Rule measure_attention_fractions: K1 on one shard of the images."""
    from vlminterp.experiments.kaduri.attention import AttentionFractionSpec
    from vlminterp.experiments.kaduri.attention import attention_fractions as run

    opened, rows = _kaduri_shard(session, "K1 attention fractions", images, shard, images_per_shard)
    return run(opened, rows, build_spec(AttentionFractionSpec, spec, where="kaduri.attention"))


def group_knockouts(*, session: Section, spec: Section, images: PathLike, shard: str,
                    images_per_shard: int) -> pd.DataFrame:
    """Rule run_group_knockouts: K2 on one shard of the images, judged offline."""
    from vlminterp.experiments.kaduri.knockout import KnockoutSpec
    from vlminterp.experiments.kaduri.knockout import group_knockouts as run

    opened, rows = _kaduri_shard(session, "K2 group knockouts", images, shard, images_per_shard)
    return run(opened, rows, build_spec(KnockoutSpec, spec, where="kaduri.knockout"))


def localization(*, session: Section, spec: Section, images: PathLike, shard: str,
                 images_per_shard: int) -> pd.DataFrame:
    """Rule localize_objects: K3 on one shard of the images."""
    from vlminterp.experiments.kaduri.localization import LocalizationSpec
    from vlminterp.experiments.kaduri.localization import localization as run

    opened, rows = _kaduri_shard(session, "K3 localization", images, shard, images_per_shard)
    return run(opened, rows, build_spec(LocalizationSpec, spec, where="kaduri.localization"))


def reprompting(*, session: Section, spec: Section, images: PathLike, questions: PathLike, shard: str,
                images_per_shard: int) -> pd.DataFrame:
    """Rule answer_reprompt_questions: K4 on one shard of the images."""
    from vlminterp.experiments.kaduri.reprompt import RepromptSpec
    from vlminterp.experiments.kaduri.reprompt import reprompting as run

    opened, rows = _kaduri_shard(session, "K4 re-prompting", images, shard, images_per_shard)
    return run(opened, rows, build_spec(RepromptSpec, spec, where="kaduri.reprompt"), questions=read_table(questions))


# ---- summaries: a stage's gathered table in, its summary table(s) out (the figures draw these) ----
def ablation_summary(*, table: PathLike, seed: int, resamples: int, vocabulary: str) -> tuple[pd.DataFrame, ...]:
    """Rule summarize_token_ablation: N1's flip rates with VQA's chance (`summaries.ablation_summary`),
    its controls table (`controls.ablation_controls`, the generative descriptions read with the
    stage's vocabulary extended by the targets' categories) and its flip rates per category."""
    from vlminterp.experiments.controls import ablation_controls
    from vlminterp.scoring.vocabulary import load_vocabulary
    from vlminterp.summaries import ablation_summary as summarize
    from vlminterp.summaries import flip_by_category

    ablation = read_table(table)
    summary = summarize(ablation, seed=seed, n_resamples=resamples)
    mentions = load_vocabulary(vocabulary, categories=sorted(set(ablation["category"]))).categories_in
    return summary, ablation_controls(ablation, summary, mentions, seed=seed), flip_by_category(ablation)


def lens_summary(*, table: PathLike, seed: int, resamples: int) -> tuple[pd.DataFrame, ...]:
    """Rule summarize_logit_lens: N2's per-category breakdown and null control
    (`neo.logit_lens.summarize_lens`) and its curves (`summaries.lens_curves_summary`)."""
    from vlminterp.experiments.neo.logit_lens import summarize_lens
    from vlminterp.summaries import lens_curves_summary

    scores = read_table(table)
    return (*summarize_lens(scores), lens_curves_summary(scores, seed=seed, n_resamples=resamples))


def blocking_summary(*, table: PathLike, seed: int, resamples: int) -> pd.DataFrame:
    """Rule summarize_attention_blocking: N3's drops per window (`summaries.blocking_drops_summary`)."""
    from vlminterp.summaries import blocking_drops_summary

    return blocking_drops_summary(read_table(table), seed=seed, n_resamples=resamples)


def attention_summary(*, table: PathLike, seed: int) -> pd.DataFrame:
    """Rule summarize_attention_fractions: K1 over images (`kaduri.attention.summarize_attention_fractions`)."""
    from vlminterp.experiments.kaduri.attention import summarize_attention_fractions

    return summarize_attention_fractions(read_table(table), seed=seed)


def _judged_tables(judged: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A judged K2 table's controls table (`controls.knockout_controls`) and recall per category."""
    from vlminterp.experiments.controls import knockout_controls
    from vlminterp.experiments.kaduri.knockout import recall_by_category

    return knockout_controls(judged, seed=seed), recall_by_category(judged)


def knockout_summary(*, table: PathLike, dataset_dir: PathLike, split: str, seed: int) -> tuple[pd.DataFrame, ...]:
    """Rule summarize_group_knockouts: K2's F1 per condition (`kaduri.knockout.summarize_knockouts`)
    with the chance recall of a description naming the dataset's categories at random
    (`chance_recall`), its controls table and its recall per category."""
    from vlminterp.data.coco import CocoDataset
    from vlminterp.experiments.kaduri.knockout import knockout_chance, summarize_knockouts

    descriptions = read_table(table)
    n_categories = len(CocoDataset.load(dataset_dir, split).category_names())
    summary = summarize_knockouts(descriptions, seed=seed)
    summary["chance_recall"] = knockout_chance(descriptions, n_categories)
    return (summary, *_judged_tables(descriptions, seed))


def llm_judge_summary(*, table: PathLike, seed: int) -> tuple[pd.DataFrame, ...]:
    """Rule summarize_group_knockouts_llm: the LLM judge's K2 F1 per condition, controls table and
    recall per category (as `knockout_summary`'s, without the chance recall)."""
    from vlminterp.experiments.kaduri.knockout import summarize_knockouts

    judged = read_table(table)
    return (summarize_knockouts(judged, seed=seed), *_judged_tables(judged, seed))


def localization_summary(*, table: PathLike, band_width: int, seed: int) -> tuple[pd.DataFrame, ...]:
    """Rule summarize_localization: K3's accuracy per layer, per band of `band_width` layers and per
    eighth of the depth (`kaduri.localization.summarize_localization`), told apart by `grouping`;
    its controls table per eighth (`controls.localization_controls`) and accuracy per category."""
    from vlminterp.experiments.controls import localization_controls
    from vlminterp.experiments.kaduri.localization import (DEPTH_GROUPING, accuracy_by_category,
                                                           summarize_localization)

    peaks = read_table(table)
    per_layer = summarize_localization(peaks, seed=seed)
    per_band = summarize_localization(peaks, seed=seed, band_width=band_width)
    per_eighth = summarize_localization(peaks, seed=seed, depth=True)
    summary = pd.concat([per_layer.assign(grouping="layer"), per_band.assign(grouping=f"band of {band_width}"),
                         per_eighth.assign(grouping=DEPTH_GROUPING)], ignore_index=True)
    return summary, localization_controls(peaks, per_eighth, seed=seed), accuracy_by_category(peaks)


def reprompt_summary(*, table: PathLike, seed: int) -> tuple[pd.DataFrame, ...]:
    """Rule summarize_reprompting: K4 per method and setting (`kaduri.reprompt.summarize_reprompting`),
    its controls table per setting (`controls.reprompt_controls`) and accuracy per category."""
    from vlminterp.experiments.controls import reprompt_controls
    from vlminterp.experiments.kaduri.reprompt import accuracy_by_category, summarize_reprompting

    answers = read_table(table)
    return summarize_reprompting(answers, seed=seed), reprompt_controls(answers, seed=seed), \
        accuracy_by_category(answers)
