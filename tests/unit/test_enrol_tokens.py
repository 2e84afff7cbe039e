"""Enrolment tokens are typed on command lines: none may look like an option."""

from __future__ import annotations

from freight.hub import auth


def test_enrolment_tokens_never_start_with_a_dash() -> None:
    tokens = [auth.new_enrol_token()[0] for _ in range(5000)]
    assert not any(t.startswith("-") for t in tokens)
    assert len(set(tokens)) == len(tokens)


def test_an_enrolment_token_is_kept_only_as_its_hash() -> None:
    token, digest = auth.new_enrol_token()
    assert digest == auth.token_hash(token)
    assert token not in digest
