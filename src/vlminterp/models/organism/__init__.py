"""A tiny LLaVA "model organism" trained from scratch on the synthetic shapes world.

    from pathlib import Path
    from vlminterp.data.shapes import ShapesWorldSpec, generate_world
    from vlminterp.models.organism import OrganismSpec, train_organism, evaluate_organism, summarize_evaluation

    generate_world(ShapesWorldSpec(), Path("data/shapes"))
    losses = train_organism(OrganismSpec(), Path("data/shapes"), Path("results/organism"))
    table = evaluate_organism(Path("results/organism"), Path("data/shapes"), split="val")
    print(summarize_evaluation(table))

The saved directory is an ordinary Hugging Face LLaVA checkpoint (``LlavaForConditionalGeneration``
+ ``LlavaProcessor``), so every experiment treats it exactly like ``llava-hf/llava-1.5-7b-hf``.
Modules: ``architecture`` (spec and config), ``tokenizer`` (the SentencePiece tokenizer trained on the
world's text, and a word-level one), ``tasks`` (the task mix and the text documents), ``train`` (LLaVA's
staged training), ``evaluate`` (greedy evaluation).
"""
from vlminterp.models.organism.architecture import OrganismSpec, build_config, build_model, num_image_tokens
from vlminterp.models.organism.evaluate import (
    EVAL_TASKS,
    evaluate_organism,
    load_organism,
    summarize_evaluation,
)
from vlminterp.models.organism.tasks import (
    PROMPT_TEMPLATE,
    TASKS,
    VQA_ANSWER_PREFIX,
    Scene,
    SceneObject,
    TaskExample,
    format_prompt,
    load_scenes,
    task_examples,
    vocabulary_words,
)
from vlminterp.models.organism.tokenizer import build_processor, build_tokenizer
from vlminterp.models.organism.train import load_training_summary, train_organism

__all__ = [
    "EVAL_TASKS", "OrganismSpec", "PROMPT_TEMPLATE", "Scene", "SceneObject", "TASKS", "TaskExample",
    "VQA_ANSWER_PREFIX", "build_config", "build_model", "build_processor", "build_tokenizer", "evaluate_organism",
    "format_prompt", "load_organism", "load_scenes", "load_training_summary", "num_image_tokens",
    "summarize_evaluation", "task_examples", "train_organism", "vocabulary_words",
]
