"""The transfer-code word list: 256 distinct, simple, prefix-free words."""

from __future__ import annotations

import itertools
import re

from freight.client.words import WORDS


def test_256_distinct_words() -> None:
    assert len(WORDS) == 256
    assert len(set(WORDS)) == 256


def test_words_are_4_to_8_lowercase_letters() -> None:
    bad = [w for w in WORDS if not re.fullmatch(r"[a-z]{4,8}", w)]
    assert bad == []


def test_words_are_in_alphabetical_order() -> None:
    # A word's index is the value it encodes: the order is part of the format.
    assert list(WORDS) == sorted(WORDS)


def test_no_word_is_a_prefix_of_another() -> None:
    # Sorted, any word that is a prefix of others sorts right before one of them.
    ordered = sorted(WORDS)
    clashes = [(a, b) for a, b in itertools.pairwise(ordered) if b.startswith(a)]
    assert clashes == []


def test_new_codes_have_at_least_three_words() -> None:
    # Two words are 16 bits: three failed claims per code leave too much luck.
    from freight.cli.relay import new_words

    for _ in range(20):
        words = new_words().split("-")
        assert len(words) >= 3
        assert all(w in WORDS for w in words)
