"""A tiny LLaVA "model organism" trained from scratch on the synthetic shapes world.

    from pathlib import Path
    from vlminterp.data.shapes import ShapesWorldSpec, generate_world
    from vlminterp.organism import OrganismSpec, train_organism, evaluate_organism, summarize_evaluation

    generate_world(ShapesWorldSpec(), Path("data/shapes"))
    losses = train_organism(OrganismSpec(), Path("data/shapes"), Path("results/organism"))
    table = evaluate_organism(Path("results/organism"), Path("data/shapes"), split="val")
    print(summarize_evaluation(table))

The saved directory is an ordinary Hugging Face LLaVA checkpoint (``LlavaForConditionalGeneration``
+ ``LlavaProcessor``), so every experiment treats it exactly like ``llava-hf/llava-1.5-7b-hf``.
Modules: ``architecture`` (the LLaVA configuration), ``tokenizer`` (the SentencePiece tokenizer trained on the
world's text, and a word-level one), ``tasks`` (the task mix and the text documents), ``train`` (LLaVA's
staged training), ``evaluate`` (greedy evaluation), ``spec`` (OrganismSpec, light: the config checks read it).
The names below are imported from their module on first use, so that importing a light submodule
(``spec``, ``tasks``) does not load torch and transformers.
"""
import importlib

_MODULES = {
    "spec": ("OrganismSpec",),
    "architecture": ("build_config", "build_model", "num_image_tokens"),
    "evaluate": ("EVAL_TASKS", "evaluate_organism", "load_organism", "summarize_evaluation"),
    "tasks": ("PROMPT_TEMPLATE", "TASKS", "VQA_ANSWER_PREFIX", "Scene", "SceneObject", "TaskExample",
              "format_prompt", "load_scenes", "task_examples", "vocabulary_words"),
    "tokenizer": ("build_processor", "build_tokenizer"),
    "train": ("load_training_summary", "train_organism"),
}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """A public name, imported from its submodule on first use."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value
