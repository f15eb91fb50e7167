"""Word-level tokenizer and LlavaProcessor for the model organism.

    from vlminterp.models.organism.tokenizer import build_processor
    processor = build_processor(words=["circle", "red", ...], image_size=96, patch_size=16)
    batch = processor(images=[pil_image], text=["USER: <image>\\nDescribe this image. ASSISTANT:"],
                      return_tensors="pt")
    processor.save_pretrained(model_dir)     # AutoProcessor.from_pretrained(model_dir) loads it back

Each word and each punctuation mark is one token, so a shape name is always a single token (the
Neo VQA readout compares the top-1 next token with the name's first sub-token). The processor is
a stock ``transformers.LlavaProcessor``: the PIL ``CLIPImageProcessorPil`` (no torchvision is
needed) and a ``PreTrainedTokenizerFast`` around a ``tokenizers`` WordLevel model. ``<image>``
expands to one token per vision patch, with the CLS token dropped as in LLaVA-1.5
(``vision_feature_select_strategy="default"``, ``num_additional_image_tokens=1``).
"""
from __future__ import annotations

import re
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

UNK, PAD, BOS, EOS, IMAGE = "<unk>", "<pad>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (UNK, PAD, BOS, EOS, IMAGE)

#: Whitespace separates words; every punctuation mark and the newline are tokens of their own.
_PUNCTUATION = r"\n|[^\sA-Za-z0-9]"
_WORD = re.compile(r"[A-Za-z0-9]+|" + _PUNCTUATION)

#: LLaVA-1.5's chat format for one user turn with one image; ``add_generation_prompt`` ends the
#: prompt with "ASSISTANT:" so the model answers next.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string "
    "else message['content'][0]['text'] }} {% endif %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %} {% endif %}"
    "{% if message['role'] == 'assistant' %}ASSISTANT: "
    "{{ message['content'] if message['content'] is string else message['content'][0]['text'] }}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def split_words(text: str) -> list[str]:
    """The pieces the tokenizer's pre-tokenizer produces (special tokens aside)."""
    return _WORD.findall(text)


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is the special tokens plus ``words`` (deduplicated, in order).

    Adds ``<s>`` in front of every encoded text (as LLaVA's Llama tokenizer does), pads on the left
    (batched generation), decodes with spaces and no space before punctuation.
    """
    vocab: dict[str, int] = {}
    for token in list(SPECIAL_TOKENS) + list(words):
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Sequence([])
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[ \t\r]+"), behavior="removed"),
        pre_tokenizers.Split(Regex(_PUNCTUATION), behavior="isolated"),
    ])
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=UNK, pad_token=PAD, bos_token=BOS, eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE}, padding_side="left", model_max_length=512,
        chat_template=CHAT_TEMPLATE,
    )
    return tokenizer


def build_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """CLIP preprocessing (resize short side, centre crop, CLIP mean/std) at the world's image size."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_resize=True, do_center_crop=True, do_normalize=True, do_convert_rgb=True,
    )


def build_processor(words: Iterable[str], image_size: int, patch_size: int) -> LlavaProcessor:
    """The organism's LlavaProcessor: word-level tokenizer + CLIP image processor + image-token expansion."""
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    return LlavaProcessor(
        image_processor=build_image_processor(image_size), tokenizer=build_tokenizer(words),
        patch_size=patch_size, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE, image_token=IMAGE,
    )
