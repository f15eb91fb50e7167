"""Find which object categories a text mentions: word-boundary, case-insensitive, plurals, synonyms.

    from vlminterp.scoring.mentions import find_mentions, mentioned_categories
    vocab = {"dog": ["dog", "puppy"], "hot dog": ["hot dog", "hotdog"], "person": ["person", "people", "man"]}
    find_mentions("Two puppies and a hot-dog.", vocab)
    # -> [Mention(category='dog', start=4, end=11, surface='puppies'),
    #     Mention(category='hot dog', start=18, end=25, surface='hot-dog')]
    mentioned_categories("A man eats.", vocab)   # -> {'person'}

Rules (the ones the original Neo et al. code got wrong): a surface form matches only as whole
words: no letter may touch it on either side ("cat" never matches inside "located"), while a
digit may ("2dogs" is a dog); case is ignored; regular plurals of every form match automatically
(cat/cats, bus/buses, berry/berries, knife/knives; in an "X of Y" phrase the head X takes the
plural: "beds of flowers"); multi-word forms match across spaces, hyphens and en dashes ("hot-dog",
"hot–dog"); where matches overlap, the longest wins ("hot dog" is not a "dog"). Irregular
plurals (person/people) must be listed as synonyms.

Ignored phrases (``ignore=``) take part in the longest-match race but are never reported: with
``ignore=["flower bed"]`` the text "a flower bed" mentions no "bed". They get plurals too.
Matching is leftmost, then longest: of two overlapping candidates the one starting first wins.

Forms dropped beside a category (``dropped_beside={"seat": "toilet"}``, CHAIR's toilet-seat rule)
name nothing in a text that also mentions that category: "a toilet with the seat up" has no chair.
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
    """Regular English plurals of the head noun of ``word``: its last word, or in "X of Y" the word
    before "of" ("bed of flowers" -> "beds of flowers"). A heuristic; irregulars go in synonyms."""
    words = word.split(" ")
    if "of" in words[1:]:
        at = words.index("of", 1)
        return [" ".join([*words[:at - 1], head, *words[at:]]) for head in plural_forms(words[at - 1])]
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


#: What may stand between the words of a multi-word form: whitespace, hyphen-minus, the Unicode
#: hyphens U+2010/U+2011, figure dash U+2012 and en dash U+2013 (COCO captions write "hot–dog").
_WORD_JOIN = "[\\s\\-\u2010-\u2013]+"
#: A form may not touch a letter on either side; digits and punctuation are fine ("2dogs").
_NOT_A_LETTER_BEFORE, _NOT_A_LETTER_AFTER = r"(?<![^\W\d_])", r"(?![^\W\d_])"


def _normalise(form: str) -> str:
    """Lower case, word joiners (hyphens, dashes, whitespace) as one space: the lookup key of a match."""
    return " ".join(w for w in re.split(_WORD_JOIN, form.lower()) if w)


def _form_pattern(form: str) -> str:
    words = [re.escape(w) for w in form.split()]
    return _WORD_JOIN.join(words)


class MentionMatcher:
    """A compiled vocabulary; reuse it to score many texts."""

    def __init__(self, vocabulary: Vocabulary, *, plurals: bool = True, ignore: Sequence[str] = (),
                 dropped_beside: Mapping[str, str] | None = None) -> None:
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
        self._base_form = {form: form for _, form in explicit}
        if plurals:
            for category, form in explicit:
                for variant in plural_forms(form):
                    if self._category_of.setdefault(variant, category) == category:
                        self._base_form.setdefault(variant, form)
        self._dropped_beside = {}
        for form, beside in (dropped_beside or {}).items():
            form = _normalise(form)
            if form not in self._category_of or beside not in vocabulary:
                raise ValueError(f"dropped_beside {form!r}: {beside!r} must name a form and a category of the "
                                 f"vocabulary")
            self._dropped_beside[form] = beside
        # Longest alternatives first, so the regex prefers "hot dog" over "dog" at one position.
        alternatives = sorted(self._category_of, key=len, reverse=True)
        self._regex = re.compile(
            _NOT_A_LETTER_BEFORE + "(" + "|".join(_form_pattern(f) for f in alternatives) + ")" + _NOT_A_LETTER_AFTER,
            re.IGNORECASE)

    def find(self, text: str) -> list[Mention]:
        mentions = []
        for match in self._regex.finditer(text):
            key = _normalise(match.group(1))
            if self._category_of[key] == _IGNORED:
                continue
            mentions.append(Mention(self._category_of[key], match.start(1), match.end(1), match.group(1)))
        if self._dropped_beside:
            present = {m.category for m in mentions}
            mentions = [m for m in mentions
                        if self._dropped_beside.get(self._base_form[_normalise(m.surface)]) not in present]
        return mentions


def find_mentions(text: str, vocabulary: Vocabulary, *, plurals: bool = True,
                  ignore: Sequence[str] = ()) -> list[Mention]:
    """Every mention of a vocabulary category in ``text``, left to right, non-overlapping."""
    return MentionMatcher(vocabulary, plurals=plurals, ignore=ignore).find(text)


def mentioned_categories(text: str, vocabulary: Vocabulary, *, plurals: bool = True,
                         ignore: Sequence[str] = ()) -> set[str]:
    """The set of categories ``text`` mentions."""
    return {m.category for m in find_mentions(text, vocabulary, plurals=plurals, ignore=ignore)}
