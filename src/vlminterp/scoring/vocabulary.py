"""Synonym vocabularies: which words name which object category, for the judges.

    from vlminterp.scoring.vocabulary import load_vocabulary, vocabulary_from_categories
    coco = load_vocabulary("coco")                       # packaged: synonyms/coco.yaml (CHAIR-style)
    shapes = load_vocabulary("shapes")                   # packaged: synonyms/shapes.yaml
    mine = load_vocabulary("configs/my_synonyms.yaml")   # any file in the same format
    fallback = load_vocabulary("lvis", categories=["cat", "traffic cone"])  # no file: built, plurals automatic
    coco.categories_in("Two puppies near a hot dog stand.")  # -> {'dog', 'hot dog'}

File format (YAML): ``categories`` maps each category name to its surface forms; ``ignore``
(optional) lists phrases that block shorter matches but name nothing; ``plurals`` (optional,
default true) adds regular plurals of every form; ``dropped_beside`` (optional) maps a form to a
category beside which it names nothing (CHAIR: "seat" is no chair in a text about a toilet);
``animal_qualifiers`` (optional; CHAIR's "baby bird is a bird, not a person" rule) has
``qualifiers`` (e.g. [baby, adult]), ``categories`` (the animal categories: "<qualifier> <form>" is
added as a form of the category, for every form) and ``other_animals`` (animals outside the
categories: "<qualifier> <animal>" names nothing, so "adult deer" is no person). A bare mapping
``category: [forms]`` is also accepted. Matching rules are those of ``vlminterp.scoring.mentions`` (whole words, any case,
longest match first). A category always matches its own name.
"""
from __future__ import annotations

import functools
import importlib.resources
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from vlminterp.scoring.mentions import Mention, MentionMatcher

log = logging.getLogger(__name__)

_PACKAGE = "vlminterp.scoring"
_FOLDER = "synonyms"
_TOP_LEVEL_KEYS = {"name", "categories", "ignore", "plurals", "dropped_beside", "animal_qualifiers"}
_QUALIFIER_KEYS = {"qualifiers", "categories", "other_animals"}


@dataclass(frozen=True, eq=False)
class SynonymVocabulary:
    """Categories with their surface forms, compiled once into a matcher (``.matcher``).

    Attributes:
        name: a label ("coco", "shapes", a file stem, ...), written into judge tables.
        categories: category -> surface forms (the category's own name is always a form).
        ignore: phrases that win the longest-match race but are never reported.
        plurals: add regular plurals of every form and ignored phrase.
        source: where it came from (a file path, or "built from N categories").
        dropped_beside: form -> category: the form names nothing in a text mentioning the category.
    """

    name: str
    categories: Mapping[str, tuple[str, ...]]
    ignore: tuple[str, ...] = ()
    plurals: bool = True
    source: str = field(default="", repr=False)
    dropped_beside: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cats = {}
        for category, forms in self.categories.items():
            if not isinstance(category, str) or not category.strip():
                raise ValueError(f"vocabulary {self.name!r}: category names must be non-empty strings, "
                                 f"got {category!r}")
            if isinstance(forms, str) or not all(isinstance(f, str) for f in forms):
                raise TypeError(f"vocabulary {self.name!r}: forms of {category!r} must be a list of strings")
            cats[category] = tuple(dict.fromkeys([category, *forms]))
        object.__setattr__(self, "categories", cats)
        object.__setattr__(self, "ignore", tuple(self.ignore))
        self.matcher  # compile now: a clash between two categories fails at load time

    @functools.cached_property
    def matcher(self) -> MentionMatcher:
        return MentionMatcher(self.categories, plurals=self.plurals, ignore=self.ignore,
                              dropped_beside=self.dropped_beside)

    def find(self, text: str) -> list[Mention]:
        """Every category mention in ``text``, left to right."""
        return self.matcher.find(text)

    def categories_in(self, text: str) -> set[str]:
        """The set of categories ``text`` mentions."""
        return {m.category for m in self.matcher.find(text)}

    def __contains__(self, category: object) -> bool:
        return category in self.categories

    def __len__(self) -> int:
        return len(self.categories)

    def extended(self, categories: Iterable[str]) -> "SynonymVocabulary":
        """This vocabulary plus every category in ``categories`` it lacks (named by itself only)."""
        missing = [c for c in dict.fromkeys(categories) if c not in self.categories]
        if not missing:
            return self
        log.info("vocabulary %s: adding %d categories without synonyms: %s", self.name, len(missing), missing)
        return SynonymVocabulary(self.name, {**self.categories, **{c: (c,) for c in missing}},
                                 self.ignore, self.plurals, self.source, self.dropped_beside)

    def to_dict(self) -> dict[str, Any]:
        """The file format (round-trips through ``vocabulary_from_dict``)."""
        return {"name": self.name, "categories": {c: list(f) for c, f in self.categories.items()},
                "ignore": list(self.ignore), "plurals": self.plurals, "dropped_beside": dict(self.dropped_beside)}


VocabularyLike = SynonymVocabulary | Mapping[str, Iterable[str]]


def as_vocabulary(vocabulary: VocabularyLike) -> SynonymVocabulary:
    """Accept a ``SynonymVocabulary`` or a plain ``{category: [forms]}`` mapping."""
    if isinstance(vocabulary, SynonymVocabulary):
        return vocabulary
    if isinstance(vocabulary, Mapping):
        return vocabulary_from_dict(vocabulary, name="custom", source="mapping")
    raise TypeError(f"expected a SynonymVocabulary or a mapping, got {type(vocabulary).__name__}")


def available_vocabularies() -> list[str]:
    """Names of the packaged vocabularies (``load_vocabulary(name)`` works for each)."""
    folder = importlib.resources.files(_PACKAGE).joinpath(_FOLDER)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def vocabulary_from_dict(data: Mapping[str, Any], *, name: str = "custom", source: str = "") -> SynonymVocabulary:
    """Build from the file format (``categories``/``ignore``/``plurals``) or a bare mapping."""
    where = source or name
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: a vocabulary must be a mapping, got {type(data).__name__}")
    if "categories" in data:
        unknown = sorted(set(data) - _TOP_LEVEL_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_LEVEL_KEYS)}")
        categories = data["categories"]
        ignore = data.get("ignore") or ()
        plurals = data.get("plurals", True)
        name = data.get("name", name)
        dropped_beside = data.get("dropped_beside") or {}
        qualifiers = data.get("animal_qualifiers")
    else:
        categories, ignore, plurals, dropped_beside, qualifiers = data, (), True, {}, None
    if not isinstance(categories, Mapping) or not categories:
        raise ValueError(f"{where}: 'categories' must be a non-empty mapping of category -> list of forms")
    if isinstance(ignore, str) or not all(isinstance(p, str) for p in ignore):
        raise ValueError(f"{where}: 'ignore' must be a list of phrases")
    if not isinstance(plurals, bool):
        raise ValueError(f"{where}: 'plurals' must be true or false")
    for category, forms in categories.items():
        if forms is None or isinstance(forms, str) or not isinstance(forms, Iterable):
            raise ValueError(f"{where}: forms of {category!r} must be a list of strings")
        bad = [f for f in forms if not isinstance(f, str)]
        if bad:
            raise ValueError(f"{where}: forms of {category!r} must be strings, got {bad!r}")
    if not isinstance(dropped_beside, Mapping):
        raise ValueError(f"{where}: 'dropped_beside' must map a form to a category")
    categories = {str(c): tuple(f) for c, f in categories.items()}
    if qualifiers is not None:
        categories, ignore = _qualify_animals(qualifiers, categories, tuple(ignore), where)
    try:
        return SynonymVocabulary(str(name), categories, tuple(ignore), plurals, source, dict(dropped_beside))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _qualify_animals(spec: Any, categories: dict[str, tuple[str, ...]], ignore: tuple[str, ...], where: str,
                     ) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """CHAIR's qualifier rule: "<qualifier> <animal form>" names the animal's category (not a
    person, though "baby"/"adult" alone are persons); "<qualifier> <other animal>" names nothing."""
    if not isinstance(spec, Mapping) or set(spec) - _QUALIFIER_KEYS or "qualifiers" not in spec:
        raise ValueError(f"{where}: 'animal_qualifiers' must be a mapping with 'qualifiers' and optional "
                         f"'categories', 'other_animals' (lists); got {spec!r}")
    lists = {key: spec.get(key) or [] for key in _QUALIFIER_KEYS}
    for key, words in lists.items():
        if isinstance(words, str) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{where}: animal_qualifiers.{key} must be a list of strings")
    unknown = [c for c in lists["categories"] if c not in categories]
    if unknown:
        raise ValueError(f"{where}: animal_qualifiers.categories names unknown categories {unknown}")
    qualified = dict(categories)
    for category in lists["categories"]:
        qualified[category] = tuple(dict.fromkeys(
            [*categories[category], *(f"{q} {form}" for form in (category, *categories[category])
                                      for q in lists["qualifiers"])]))
    extra_ignore = [f"{q} {animal}" for animal in lists["other_animals"] for q in lists["qualifiers"]]
    return qualified, tuple(dict.fromkeys([*ignore, *extra_ignore]))


def vocabulary_from_categories(categories: Iterable[str | Mapping[str, Any]], *, name: str = "categories",
                               ) -> SynonymVocabulary:
    """One category per name (or per COCO category dict ``{"id", "name"}``), matched by its own
    name and that name's regular plurals. The fallback when a dataset has no synonym file."""
    names = [c["name"] if isinstance(c, Mapping) else c for c in categories]
    if not names:
        raise ValueError("no categories to build a vocabulary from")
    return SynonymVocabulary(name, {n: (n,) for n in names}, (), True, f"built from {len(names)} categories")


def load_vocabulary(source: str | os.PathLike, *,
                    categories: Iterable[str | Mapping[str, Any]] | None = None) -> SynonymVocabulary:
    """Load a vocabulary by packaged name (``available_vocabularies()``) or YAML path.

    ``categories`` (names or COCO category dicts), when given, are the dataset's categories:
    any the vocabulary lacks are added, matched by their own names; and if ``source`` names
    neither a packaged vocabulary nor a file, the vocabulary is built from them alone.
    """
    names = None if categories is None else [c["name"] if isinstance(c, Mapping) else c for c in categories]
    text = os.fspath(source)
    path = Path(text)
    packaged = importlib.resources.files(_PACKAGE).joinpath(_FOLDER, f"{text}.yaml")
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"synonym file {path} does not exist")
        vocabulary = _parse(path.read_text(encoding="utf-8"), name=path.stem, source=str(path))
    elif "/" not in text and packaged.is_file():
        vocabulary = _parse(packaged.read_text(encoding="utf-8"), name=text, source=f"{_PACKAGE}/{_FOLDER}/{text}.yaml")
    elif names is not None:
        log.info("no synonym file for %r: building the vocabulary from its %d category names", text, len(names))
        return vocabulary_from_categories(names, name=text)
    else:
        raise ValueError(f"unknown vocabulary {text!r}: not a file, and not one of the packaged "
                         f"{available_vocabularies()}; pass categories= to build one from category names")
    return vocabulary if names is None else vocabulary.extended(names)


def _parse(text: str, *, name: str, source: str) -> SynonymVocabulary:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML: {exc}") from None
    return vocabulary_from_dict(data if data is not None else {}, name=name, source=source)
