"""Generated text of the Kaduri et al. stages: each token's characters, and the categories it names.

    text, spans = token_spans(session.tokenizer, generated)         # decoded text, span per token
    mentions = token_mentions(text, spans, session.vocabulary)     # category, surface, tokens covered
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlminterp.scoring.vocabulary import SynonymVocabulary


def token_spans(tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of `ids` and each token's character span [start, end) in it.

    Spans come from decoding growing prefixes, so they follow the tokenizer's own detokenisation
    (spaces, merged pieces); special tokens decode to nothing and get empty spans.
    """
    spans, previous = [], 0
    for k in range(len(ids)):
        length = len(tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=True))
        spans.append((previous, max(previous, length)))
        previous = max(previous, length)
    return tokenizer.decode(list(ids), skip_special_tokens=True), spans


@dataclass(frozen=True)
class TokenMention:
    """A category named in generated text: the mention and the generated tokens it covers."""

    category: str
    surface: str
    start: int  # character span in the decoded text
    end: int
    first_token: int  # index into the generated tokens
    last_token: int


def token_mentions(text: str, spans: Sequence[tuple[int, int]], vocabulary: SynonymVocabulary) -> list[TokenMention]:
    """Every vocabulary mention of `text` (the judge's matching) with the tokens it covers."""
    out = []
    for mention in vocabulary.find(text):
        covered = [k for k, (s, e) in enumerate(spans) if e > s and s < mention.end and e > mention.start]
        if covered:
            out.append(TokenMention(mention.category, mention.surface, mention.start, mention.end,
                                    covered[0], covered[-1]))
    return out
