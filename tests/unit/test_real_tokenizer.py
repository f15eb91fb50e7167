"""Scoring with LLaVA-1.5's real tokenizer (the Llama 2 SentencePiece model, ../shared/fixtures):
names that split into several sub-tokens, plurals, the first sub-token the VQA setting scores,
the token spans K3 maps mentions onto, and the prompt the processor builds. Expected pieces are
written out by hand from the SentencePiece model, not derived with the code under test."""
from __future__ import annotations

import pytest
from PIL import Image

from shared_fixtures import COCO_MINI, LLAMA2_TOKENIZER, require
from vlminterp.experiments.kaduri.text import token_mentions, token_spans
from vlminterp.models.adapters import answer_first_token
from vlminterp.scoring.vocabulary import load_vocabulary


@pytest.fixture(scope="module")
def processor():
    from vlminterp.testing.synthetic import llava_1_5_processor

    return llava_1_5_processor(require(LLAMA2_TOKENIZER))


@pytest.fixture(scope="module")
def coco_vocabulary():
    return load_vocabulary("coco")


def test_llava_layout_of_the_special_tokens(processor):
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["<s>", "</s>", "<image>", "<pad>"]) == [1, 2, 32000, 32001]
    assert tokenizer("USER:")["input_ids"][0] == 1  # BOS added, as llava-hf's tokenizer does


def test_prompt_holds_576_image_tokens_after_bos(processor):
    image = Image.open(require(COCO_MINI) / "train2017" / "000000037666.jpg")
    encoding = processor(images=image, text="USER: <image>\nDescribe this image. ASSISTANT:", return_tensors="pt")
    ids = encoding["input_ids"][0].tolist()
    assert ids[0] == 1 and ids.count(32000) == 576
    assert tuple(encoding["pixel_values"].shape) == (1, 3, 336, 336)
    first = ids.index(32000)
    assert ids[first:first + 576] == [32000] * 576  # one contiguous block


@pytest.mark.parametrize("word, pieces", [
    ("giraffe", ["▁g", "ira", "ffe"]),
    ("skateboard", ["▁sk", "ate", "board"]),
    ("dog", ["▁dog"]),
])
def test_vqa_scores_the_first_sub_token(processor, word, pieces):
    tokenizer = processor.tokenizer
    assert tokenizer.tokenize(f" {word}")[-len(pieces):] == pieces
    assert answer_first_token(tokenizer, "It is a", word) == tokenizer.convert_tokens_to_ids(pieces[0])


def test_multi_piece_plural_mentions_cover_their_tokens(processor, coco_vocabulary):
    tokenizer = processor.tokenizer
    ids = tokenizer("Two giraffes stand near a hot dog stand.", add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    text, spans = token_spans(tokenizer, ids)
    assert text == "Two giraffes stand near a hot dog stand."
    found = {m.category: (m.first_token, m.last_token) for m in token_mentions(text, spans, coco_vocabulary)}
    giraffe = pieces.index("▁g")
    assert pieces[giraffe:giraffe + 4] == ["▁g", "ira", "ff", "es"]
    assert found["giraffe"] == (giraffe, giraffe + 3)
    hot = pieces.index("▁hot")
    assert found["hot dog"] == (hot, pieces.index("▁dog"))
    assert "dog" not in found  # "hot dog" is the food, not the animal


def test_generated_yes_is_a_polling_success(processor):
    from vlminterp.experiments.neo.ablation import _YES

    tokenizer = processor.tokenizer
    for answer in ("Yes, there is", "yes.", " Yes"):
        assert _YES.match(tokenizer.decode(tokenizer(answer, add_special_tokens=False)["input_ids"]))
    assert not _YES.match(tokenizer.decode(tokenizer("Yesterday", add_special_tokens=False)["input_ids"]))


def _original_llava_ids(prompt: str, n_image_tokens: int = 576) -> list[int]:
    """What the original LLaVA code feeds the model for `prompt` (its `tokenizer_image_token` with
    the slow Llama tokenizer): each text chunk around `<image>` encoded by SentencePiece on its own
    (so each gets the dummy prefix space), BOS once at the start, the image where `<image>` was."""
    import sentencepiece

    pieces = sentencepiece.SentencePieceProcessor(model_file=str(require(LLAMA2_TOKENIZER)))
    before, after = prompt.split("<image>")
    return [pieces.bos_id(), *pieces.encode(before), *[32000] * n_image_tokens, *pieces.encode(after)]


def test_kaduri_paper_prompt_tokenizes_as_the_original(processor, synthetic):
    """configs/llava-1.5-7b.yaml's describe prompt, put in the chat template by the adapter and
    encoded by the processor, gives exactly the ids of Kaduri et al.'s code ("USER: <image>\\n
    describe the image ASSISTANT:" with the long system prompt; a space after the newline)."""
    from pathlib import Path

    import yaml

    from vlminterp.models.adapters import adapter_for

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "llava-1.5-7b.yaml").read_text())
    kaduri = config["kaduri"]
    model, _, _ = synthetic("tiny-llama")                  # a Llama text model: the Vicuna template
    prompt = adapter_for(model, processor).format_prompt(kaduri["prompt"], kaduri["system_prompt"])
    assert prompt.endswith("USER: <image>\n describe the image ASSISTANT:")
    assert prompt.startswith("A chat between a curious human and an artificial intelligence assistant.")
    image = Image.open(require(COCO_MINI) / "train2017" / "000000037666.jpg")
    ids = processor(images=image, text=prompt, return_tensors="pt")["input_ids"][0].tolist()
    assert ids == _original_llava_ids(prompt)
    # Without the space the text differs from the original's after the image: "\ndescribe" is not "\n describe".
    unspaced = prompt.replace("\n describe", "\ndescribe")
    assert processor(images=image, text=unspaced)["input_ids"][0] != _original_llava_ids(prompt)


def test_first_pieces_of_coco_under_llama2_credit_no_shared_piece(processor, coco_vocabulary):
    """Every COCO name, synonym and plural, split by the SentencePiece model itself: a first piece
    that begins forms of two categories credits neither (e.g. giraffe's "▁g")."""
    import sentencepiece

    from helpers import name_token_ids
    from vlminterp.scoring.mentions import plural_forms
    from vlminterp.scoring.pieces import first_pieces

    model = sentencepiece.SentencePieceProcessor(model_file=str(require(LLAMA2_TOKENIZER)))
    base = model.encode("It is a", out_type=str)
    owners: dict[str, set[str]] = {}
    for category, forms in coco_vocabulary.categories.items():
        for form in {*forms, *(p for f in forms for p in plural_forms(f))}:
            full = model.encode(f"It is a {form}", out_type=str)
            assert full[:len(base)] == base, form
            owners.setdefault(full[len(base)], set()).add(category)
    shared = {piece for piece, cats in owners.items() if len(cats) > 1}
    # "▁g ira ffe", "▁g riz zly" (bear); "▁cat" also begins "catamaran" (boat)
    assert {"giraffe", "bear"} <= owners["▁g"] and owners["▁cat"] == {"cat", "boat"}
    tokenizer = processor.tokenizer
    pieces = first_pieces(tokenizer, coco_vocabulary, "It is a")
    assert {tokenizer.convert_ids_to_tokens(p) for p in pieces.shared} == shared
    for category in coco_vocabulary.categories:
        expected = {p for p, cats in owners.items() if cats == {category} and p.strip("▁")}
        assert {tokenizer.convert_ids_to_tokens(p) for p in pieces.credits[category]} == expected, category
    assert name_token_ids(tokenizer, coco_vocabulary, "giraffe", "It is a").isdisjoint(
        tokenizer.convert_tokens_to_ids(sorted(shared)))
