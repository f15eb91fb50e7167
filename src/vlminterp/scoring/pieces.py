"""First-piece scoring without collisions: which token ids may credit which category.

    from vlminterp.scoring.pieces import first_pieces
    pieces = first_pieces(tokenizer, vocabulary, "It is a")
    pieces.credits["circle"]     # frozenset of token ids that name the circle and nothing else
    pieces.name_piece["circle"]  # the name's own first piece, or None where it is shared
    pieces.shared                # token id -> the categories whose forms all begin with it

One rule for every readout that scores a token (the logit lens's top-k, a VQA answer's top-1):
the first piece each form of each category adds after ``prefix`` credits that category unless it
also begins another category's form. The rule and its edge cases: docs/PROTOCOLS.md, "N2. Logit
lens", first pieces without collisions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from vlminterp.scoring.mentions import plural_forms
from vlminterp.scoring.vocabulary import SynonymVocabulary


@dataclass(frozen=True)
class FirstPieces:
    """The first pieces of a vocabulary's forms under one tokenizer and prefix (module docstring).

    Attributes:
        prefix: the text the forms follow (after a space), e.g. "It is a".
        credits: category -> the token ids that begin its forms and no other category's.
        name_piece: category -> its name's first piece, None where that piece is shared.
        shared: token id -> the categories (sorted) whose forms begin with it, for shared ids only.
        forms: category -> (form, first piece id) for every form considered, for reports.
    """

    prefix: str
    credits: Mapping[str, frozenset[int]]
    name_piece: Mapping[str, int | None]
    shared: Mapping[int, tuple[str, ...]]
    forms: Mapping[str, tuple[tuple[str, int], ...]]

    def unscorable(self) -> list[str]:
        """Categories with no crediting piece at all."""
        return [c for c, ids in self.credits.items() if not ids]

    def name_piece_problem(self, category: str) -> str:
        """Why `category`'s own name piece cannot score a one-token answer ("" when it can): the
        reason a VQA readout excludes the target."""
        if self.name_piece[category] is not None:
            return ""
        piece = self.forms[category][0][1]
        others = [c for c in self.shared.get(piece, ()) if c != category]
        if others:
            return f"first piece of {category!r} also begins a form of {', '.join(others)}"
        return f"first piece of {category!r} is unknown or blank"


def category_forms(vocabulary: SynonymVocabulary, category: str) -> list[str]:
    """Every surface form of ``category``: name, synonyms and (if the vocabulary adds them) plurals."""
    forms = list(dict.fromkeys([category, *vocabulary.categories.get(category, (category,))]))
    if vocabulary.plurals:
        forms += [p for f in list(forms) for p in plural_forms(f)]
    return list(dict.fromkeys(forms))


def first_pieces(tokenizer, vocabulary: SynonymVocabulary, prefix: str,
                 categories: Iterable[str] | None = None) -> FirstPieces:
    """The collision-free first pieces of ``vocabulary`` (every category of it, plus any of
    ``categories`` it lacks, named by itself) after ``prefix`` (module docstring)."""
    from vlminterp.models.adapters import answer_first_token

    names = list(dict.fromkeys([*vocabulary.categories, *(categories or ())]))
    forms = {c: tuple((f, answer_first_token(tokenizer, prefix, f)) for f in category_forms(vocabulary, c))
             for c in names}
    owners: dict[int, set[str]] = {}
    for category, pairs in forms.items():
        for _, piece in pairs:
            owners.setdefault(piece, set()).add(category)
    shared = {piece: tuple(sorted(cats)) for piece, cats in owners.items() if len(cats) > 1}
    unknown = getattr(tokenizer, "unk_token_id", None)  # an unknown piece names nothing
    blank = {p for p in owners if not tokenizer.decode([p]).strip()}  # a bare "▁" begins any word
    never = set(shared) | blank | ({unknown} if unknown is not None else set())
    credits = {c: frozenset(p for _, p in pairs if p not in never) for c, pairs in forms.items()}
    name_piece = {c: (None if pairs[0][1] in never else pairs[0][1]) for c, pairs in forms.items()}
    return FirstPieces(prefix, credits, name_piece, dict(sorted(shared.items())), forms)
