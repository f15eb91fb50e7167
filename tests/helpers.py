"""Input helpers shared by the unit tests: random images, encoded prompts, a mix of conditions.

    from helpers import encode, split_inputs, mixed_conditions, continuation_ids

    inputs = encode(processor, adapter, seed=0)               # model-forward kwargs of one prompt
    ids, pixels, extra = split_inputs(adapter, inputs)        # as the reference functions take them
    conditions = mixed_conditions(adapter, ids, k=4)          # ablations, knockouts, both, clean
    question = continuation_ids(processor, " Is there a cat? ASSISTANT:")   # (1, n) ids, no BOS

(`tests/` is on sys.path because pytest prepends the directory of the root conftest.py; the unit
conftest exposes `encode` and `random_image` as the fixtures `make_inputs` and `random_image`.)
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vlminterp.interventions import Ablation, Condition, From, Knockout
from vlminterp.scoring.pieces import first_pieces
from vlminterp.scoring.vocabulary import SynonymVocabulary


def name_token_ids(tokenizer, vocabulary: SynonymVocabulary, category: str, prefix: str) -> set[int]:
    """Token ids that name `category`: its collision-free first pieces (`scoring.pieces`)."""
    return set(first_pieces(tokenizer, vocabulary, prefix, [category]).credits[category])


def random_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A PIL image of uniform noise, `size` = (width, height)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def encode(processor, adapter, text: str = "Describe this image.", seed: int = 0, system_prompt=None, size=(64, 48)):
    """Tokenized single-image prompt: the keyword arguments of a full model forward, i.e. input_ids
    (1, T), pixel_values, and what else the family needs (Qwen2-VL: image_grid_thw, mm_token_type_ids)."""
    prompt = adapter.format_prompt(text, system_prompt)
    enc = processor(images=random_image(seed, size), text=prompt, return_tensors="pt")
    return adapter.model_inputs(enc["input_ids"], **adapter.image_inputs(enc))


def image_inputs(adapter, inputs) -> dict:
    """The vision tower's inputs among `inputs` (pixel_values, and image_grid_thw for Qwen2-VL)."""
    return {k: inputs[k] for k in adapter.image_input_names if k in inputs}


def split_inputs(adapter, inputs):
    """(input_ids, pixel_values, other image inputs) as the reference functions take them."""
    extra = {k: v for k, v in image_inputs(adapter, inputs).items() if k != "pixel_values"}
    return inputs["input_ids"], inputs["pixel_values"], extra


def continuation_ids(processor, text: str) -> torch.Tensor:
    """(1, n) token ids of `text` without special tokens (a question appended after a cache)."""
    return processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def mixed_conditions(adapter, ids, k: int = 4) -> list:
    """Ablations, knockouts in several layer windows / heads, combinations, and the clean run (first).
    `k` sizes the partial image-token sets (4 for a 4x4 grid; larger for the tiled / dynamic grids)."""
    length = ids.shape[1]
    image = adapter.image_positions(ids)[0]
    after_image = int(image[-1]) + 1
    last_layer = adapter.n_layers - 1
    mean = torch.randn(adapter.hidden_size, generator=torch.Generator().manual_seed(1))
    return [
        None,
        Knockout([length - 1], image, layers=[0, 1]),
        Knockout([length - 1], image[:k], layers=range(1, last_layer + 1)),
        Knockout([length - 1, length - 2], image[::2], heads=[1]),
        Knockout(range(after_image, length), image),  # every text token after the image, all layers
        Knockout(range(after_image, length), image, layers=range(1, 3)),  # ... in a layer window
        Ablation(image[2:2 + k], mean),
        Ablation(image[-(k - 1):]),  # zeros
        Condition(ablations=(Ablation(image[:k // 2], mean),),
                  knockouts=(Knockout([length - 1], image[5:5 + k], layers=[2]),)),
        Knockout(From(length), image[:k + 2], heads=[0, adapter.n_heads - 1]),  # decode steps only, per head
        Knockout(From(length), image),  # decode steps only
    ]
