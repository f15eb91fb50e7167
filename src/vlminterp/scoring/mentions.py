"""Find which object categories a text mentions: word-boundary, case-insensitive, plurals, synonyms.

    from vlminterp.scoring.mentions import find_mentions, mentioned_categories
    vocab = {"dog": ["dog", "puppy"], "hot dog": ["hot dog", "hotdog"], "person": ["person", "people", "man"]}
    find_mentions("Two puppies and a hot-dog.", vocab)
    # -> [Mention(category='dog', start=4, end=11, surface='puppies'),
    #     Mention(category='hot dog', start=18, end=25, surface='hot-dog')]
    mentioned_categories("A man eats.", vocab)   # -> {'person'}

Rules (the ones the original Neo et al. code got wrong): a surface form matches only as whole
words ("cat" never matches inside "located"); case is ignored; regular plurals of every form
match automatically (cat/cats, bus/buses, berry/berries, knife/knives); multi-word forms match
across a space or hyphen; where matches overlap, the longest wins ("hot dog" is not a "dog").
Irregular plurals (person/people) must be listed as synonyms.

Ignored phrases (``ignore=``) take part in the longest-match race but are never reported: with
``ignore=["flower bed"]`` the text "a flower bed" mentions no "bed". They get plurals too.
Matching is leftmost, then longest: of two overlapping candidates the one starting first wins.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

Vocabulary = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Mention:
    """One match: the category, the character span [start, end) in the text, the matched text."""

    category: str
    start: int
    end: int
    surface: str


def plural_forms(word: str) -> list[str]:
    """Regular English plurals of the last word of ``word`` (a heuristic; irregulars go in synonyms)."""
    head, _, last = word.rpartition(" ")
    prefix = f"{head} " if head else ""
    lower = last.lower()
    forms = [last + "s"]
    if re.search(r"(s|x|z|ch|sh)$", lower):
        forms.append(last + "es")
    if re.search(r"[^aeiou]y$", lower):
        forms.append(last[:-1] + "ies")
    if lower.endswith("fe"):
        forms.append(last[:-2] + "ves")
    elif lower.endswith("f"):
        forms.append(last[:-1] + "ves")
    return [prefix + f for f in forms]


_IGNORED = "\x00ignored"  # owner of ignored phrases; no real category can be named this


def _normalise(form: str) -> str:
    """Lower case, hyphens and runs of whitespace as one space: the key a match is looked up by."""
    return " ".join(w for w in re.split(r"[\s\-]+", form.lower()) if w)


def _form_pattern(form: str) -> str:
    words = [re.escape(w) for w in form.split()]
    return r"[\s\-]+".join(words)


class MentionMatcher:
    """A compiled vocabulary; reuse it to score many texts."""

    def __init__(self, vocabulary: Vocabulary, *, plurals: bool = True, ignore: Sequence[str] = ()) -> None:
        if not vocabulary:
            raise ValueError("vocabulary is empty")
        if isinstance(ignore, str):
            raise TypeError("ignore must be a list of phrases, not a string")
        # Explicit forms first (a clash between two categories is an error), then generated
        # plurals, which never override an explicit form.
        self._category_of: dict[str, str] = {}
        explicit: list[tuple[str, str]] = []
        for category, forms in vocabulary.items():
            if isinstance(forms, str):
                raise TypeError(f"vocabulary[{category!r}] must be a list of surface forms, not a string")
            for form in list(forms) + [category]:
                form = _normalise(form)
                if form:
                    owner = self._category_of.setdefault(form, category)
                    if owner != category:
                        raise ValueError(f"surface form {form!r} belongs to both {owner!r} and {category!r}")
                    explicit.append((category, form))
        for phrase in ignore:
            phrase = _normalise(phrase)
            if phrase:
                owner = self._category_of.setdefault(phrase, _IGNORED)
                if owner != _IGNORED:
                    raise ValueError(f"ignored phrase {phrase!r} is also a surface form of {owner!r}")
                explicit.append((_IGNORED, phrase))
        if plurals:
            for category, form in explicit:
                for variant in plural_forms(form):
                    self._category_of.setdefault(variant, category)
        # Longest alternatives first, so the regex prefers "hot dog" over "dog" at one position.
        alternatives = sorted(self._category_of, key=len, reverse=True)
        self._regex = re.compile(
            r"(?<![\w])(" + "|".join(_form_pattern(f) for f in alternatives) + r")(?![\w])", re.IGNORECASE)

    def find(self, text: str) -> list[Mention]:
        mentions = []
        for match in self._regex.finditer(text):
            key = _normalise(match.group(1))
            if self._category_of[key] == _IGNORED:
                continue
            mentions.append(Mention(self._category_of[key], match.start(1), match.end(1), match.group(1)))
        return mentions


def find_mentions(text: str, vocabulary: Vocabulary, *, plurals: bool = True,
                  ignore: Sequence[str] = ()) -> list[Mention]:
    """Every mention of a vocabulary category in ``text``, left to right, non-overlapping."""
    return MentionMatcher(vocabulary, plurals=plurals, ignore=ignore).find(text)


def mentioned_categories(text: str, vocabulary: Vocabulary, *, plurals: bool = True,
                         ignore: Sequence[str] = ()) -> set[str]:
    """The set of categories ``text`` mentions."""
    return {m.category for m in find_mentions(text, vocabulary, plurals=plurals, ignore=ignore)}
