"""Tokenizers and LlavaProcessors: the organism's SentencePiece one, and a word-level one.

    from vlminterp.organism.tokenizer import train_sentencepiece, sentencepiece_processor
    model = train_sentencepiece(texts, vocab_size=256, max_piece_length=5)   # serialized .model bytes
    processor = sentencepiece_processor(model, image_size=96, patch_size=16)

The organism's tokenizer is LLaVA's kind: a SentencePiece BPE model (``<unk>`` 0, ``<s>`` 1,
``</s>`` 2, ``<image>`` and ``<pad>`` appended), loaded as transformers' ``LlamaTokenizer`` exactly
as llava-hf checkpoints load theirs, trained on the world's text by rule train_organism. Pieces
are at most ``max_piece_length`` characters ("▁" included), so longer names split into several
pieces as rarer words do in Llama's vocabulary ("circle" -> "▁cir" "cle"): first-sub-token
scoring and multi-piece mention matching are exercised by the default run.

The word-level tokenizer (``build_processor``; the GPU smoke checkpoint's):

    from vlminterp.organism.tokenizer import build_processor
    processor = build_processor(words=["circle", "red", ...], image_size=96, patch_size=16)
    batch = processor(images=[pil_image], text=["USER: <image>\\nDescribe this image. ASSISTANT:"],
                      return_tensors="pt")
    processor.save_pretrained(model_dir)     # AutoProcessor.from_pretrained(model_dir) loads it back

Each word and each punctuation mark is one token, so a shape name is always a single token. The processor is
a stock ``transformers.LlavaProcessor``: the PIL ``CLIPImageProcessorPil`` (no torchvision is
needed) and a ``PreTrainedTokenizerFast`` around a ``tokenizers`` WordLevel model. ``<image>``
expands to one token per vision patch, with the CLS token dropped as in LLaVA-1.5
(``vision_feature_select_strategy="default"``, ``num_additional_image_tokens=1``).
"""
from __future__ import annotations

import itertools
import re
import string
import tempfile
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPImageProcessorPil, LlamaTokenizer, LlavaProcessor, PreTrainedTokenizerFast

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


def word_vocabulary(words: Iterable[str], *, special_ids: dict[str, int] | None = None,
                    vocab_size: int | None = None) -> dict[str, int]:
    """Token -> id: the special tokens at ``special_ids`` (default: ids 0-4 in ``SPECIAL_TOKENS`` order),
    ``words`` (deduplicated, in order) at the lowest free ids, then placeholders ``<unused{i}>`` up to
    ``vocab_size`` (default: no padding). A checkpoint's layout, e.g. LLaVA-1.5's (``<unk>`` 0,
    ``<s>`` 1, ``</s>`` 2, ``<image>`` 32000, ``<pad>`` 32001, 32064 tokens), so that a word-level
    tokenizer fits a model config with that vocabulary. Placeholders never come out of encoding text
    (``<`` and ``_`` are split off); a random model may generate them."""
    ids = dict(special_ids) if special_ids is not None else {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    if set(ids) != set(SPECIAL_TOKENS):
        raise ValueError(f"special_ids must give an id to each of {SPECIAL_TOKENS}, got {sorted(ids)}")
    if len(set(ids.values())) != len(ids):
        raise ValueError(f"special_ids must be distinct, got {ids}")
    taken = set(ids.values())
    vocab: dict[str, int] = dict(ids)
    free = (i for i in itertools.count() if i not in taken)
    for word in words:
        if word not in vocab:
            vocab[word] = next(free)
    size = max(vocab.values()) + 1
    if vocab_size is not None:
        if vocab_size < size:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the {size} ids the words and special tokens need")
        size = vocab_size
    used = set(vocab.values())
    for i in range(size):
        if i not in used:
            vocab[f"<unused{i}>"] = i
    return vocab


def build_tokenizer(words: Iterable[str], *, special_ids: dict[str, int] | None = None,
                    vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is the special tokens plus ``words`` (deduplicated, in
    order); ``special_ids`` and ``vocab_size`` fit it to a checkpoint's layout (`word_vocabulary`).

    Adds ``<s>`` in front of every encoded text (as LLaVA's Llama tokenizer does), pads on the left
    (batched generation), decodes with spaces and no space before punctuation.
    """
    vocab = word_vocabulary(words, special_ids=special_ids, vocab_size=vocab_size)
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


def build_processor(words: Iterable[str], image_size: int, patch_size: int, *,
                    special_ids: dict[str, int] | None = None, vocab_size: int | None = None) -> LlavaProcessor:
    """The organism's LlavaProcessor: word-level tokenizer + CLIP image processor + image-token expansion
    (``special_ids``, ``vocab_size``: a checkpoint's token layout, see `word_vocabulary`)."""
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    return LlavaProcessor(
        image_processor=build_image_processor(image_size),
        tokenizer=build_tokenizer(words, special_ids=special_ids, vocab_size=vocab_size),
        patch_size=patch_size, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE, image_token=IMAGE,
    )


#: Characters every organism tokenizer has a piece for, so that any English prompt encodes without <unk>.
REQUIRED_CHARS = string.ascii_letters + string.digits + string.punctuation


def train_sentencepiece(texts: Iterable[str], vocab_size: int, max_piece_length: int) -> bytes:
    """A SentencePiece BPE model trained on ``texts`` (serialized ``.model`` bytes), deterministic.

    Llama 2's settings (BPE, identity normalization, byte fallback) and layout: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, no padding piece (``<image>`` and ``<pad>``
    are appended by `sentencepiece_processor`, as LLaVA appends them); every printable ASCII
    character is a piece (and so is the newline of the chat format, seen in the corpus); any other
    byte falls back to ``<0x..>`` pieces. ``vocab_size`` is an upper bound: the corpus of a small
    world may have fewer merges. Pieces hold at most ``max_piece_length`` characters ("▁" included).
    """
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        hard_vocab_limit=False, max_sentencepiece_length=max_piece_length, character_coverage=1.0,
        required_chars=REQUIRED_CHARS, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    return model.getvalue()


def sentencepiece_processor(sentencepiece_model: bytes, image_size: int, patch_size: int) -> LlavaProcessor:
    """The organism's LlavaProcessor around a SentencePiece model (`train_sentencepiece`): Llama's
    tokenizer as llava-hf has it (BOS added, no legacy prefix-space handling, ``<image>`` and
    ``<pad>`` appended), left padding, LLaVA-1.5's chat format, CLIP image processing."""
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "tokenizer.model").write_bytes(sentencepiece_model)
        tokenizer = LlamaTokenizer.from_pretrained(directory, legacy=False, add_bos_token=True, add_eos_token=False,
                                                   padding_side="left", model_max_length=512,
                                                   chat_template=CHAT_TEMPLATE)
    tokenizer.add_tokens([IMAGE], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": PAD})
    tokenizer.image_token = IMAGE
    return LlavaProcessor(
        image_processor=build_image_processor(image_size), tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )


def name_pieces(tokenizer, name: str) -> list[str]:
    """The pieces ``name`` splits into after a space ("circle" -> ["▁cir", "cle"])."""
    return tokenizer.convert_ids_to_tokens(tokenizer(f" {name}", add_special_tokens=False)["input_ids"])
