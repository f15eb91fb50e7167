"""Tests of object-mention matching (word boundaries, case, plurals, synonyms, longest match)."""
from __future__ import annotations

import pytest

from vlminterp.scoring.mentions import MentionMatcher, find_mentions, mentioned_categories, plural_forms

VOCAB = {
    "cat": ["cat", "kitten"],
    "dog": ["dog", "puppy"],
    "hot dog": ["hot dog", "hotdog"],
    "person": ["person", "people", "man", "men"],
    "bus": ["bus"],
    "knife": ["knife"],
}


def test_word_boundary_not_substring():
    assert mentioned_categories("The box is located on a catwalk.", VOCAB) == set()
    assert mentioned_categories("A cat.", VOCAB) == {"cat"}


def test_case_insensitive_and_spans():
    [m] = find_mentions("Look: a KITTEN!", VOCAB)
    assert (m.category, m.start, m.end, m.surface) == ("cat", 8, 14, "KITTEN")


@pytest.mark.parametrize("text, category", [
    ("two cats", "cat"), ("three buses", "bus"), ("some puppies", "dog"), ("the knives", "knife"),
    ("many people", "person"), ("two men", "person"),
])
def test_plurals_and_synonyms(text, category):
    assert mentioned_categories(text, VOCAB) == {category}


def test_plurals_can_be_switched_off():
    assert mentioned_categories("two cats", VOCAB, plurals=False) == set()


def test_longest_match_wins_and_multiword_forms_allow_hyphen():
    mentions = find_mentions("A hot-dog, a hot  dog and a dog.", VOCAB)
    assert [m.category for m in mentions] == ["hot dog", "hot dog", "dog"]


def test_order_is_left_to_right():
    assert [m.category for m in find_mentions("a dog, a cat and a dog", VOCAB)] == ["dog", "cat", "dog"]


def test_plural_forms_heuristic():
    assert "berries" in plural_forms("berry")
    assert "boxes" in plural_forms("box")
    assert "hot dogs" in plural_forms("hot dog")


def test_bad_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        MentionMatcher({})
    with pytest.raises(TypeError, match="cat"):
        MentionMatcher({"cat": "cat"})
    with pytest.raises(ValueError, match="both"):
        MentionMatcher({"cat": ["pet"], "dog": ["pet"]})


def test_ignored_phrases_win_the_longest_match_but_are_not_reported():
    ignore = ["flower bed"]
    vocab = {"bed": ["bed"], "person": ["man"]}
    assert mentioned_categories("A flower bed and flower beds by a bed.", vocab, ignore=ignore) == {"bed"}
    assert [m.surface for m in find_mentions("two flower-beds, one bed", vocab, ignore=ignore)] == ["bed"]
    with pytest.raises(ValueError, match="also a surface form"):
        MentionMatcher(vocab, ignore=["man"])
    with pytest.raises(TypeError, match="ignore"):
        MentionMatcher(vocab, ignore="flower bed")


def test_forms_written_with_a_hyphen_match_hyphen_or_space():
    vocab = {"shirt": ["t-shirt"]}
    assert [m.surface for m in find_mentions("a T-shirt and two t shirts", vocab)] == ["T-shirt", "t shirts"]


def test_digits_may_touch_a_form_letters_may_not():
    assert mentioned_categories("2dogs and 3cats", VOCAB) == {"dog", "cat"}
    assert mentioned_categories("dogma, catalogue, bus2", VOCAB) == {"bus"}


def test_en_dash_and_unicode_hyphens_join_words():
    assert [m.category for m in find_mentions("a hot\u2013dog, a hot\u2010dog", VOCAB)] == ["hot dog", "hot dog"]


def test_plural_of_an_of_phrase_is_on_its_head():
    assert plural_forms("bed of flowers") == ["beds of flowers"]
    assert mentioned_categories("beds of flowers by a bed", {"bed": ["bed"]}, ignore=["bed of flowers"]) == {"bed"}


def test_dropped_beside_drops_a_form_only_next_to_its_category():
    vocab = {"chair": ["seat"], "toilet": ["toilet"]}
    matcher = MentionMatcher(vocab, dropped_beside={"seat": "toilet"})
    assert {m.category for m in matcher.find("a toilet with its seats up")} == {"toilet"}
    assert {m.category for m in matcher.find("two seats")} == {"chair"}
    with pytest.raises(ValueError, match="dropped_beside"):
        MentionMatcher(vocab, dropped_beside={"seat": "sofa"})
