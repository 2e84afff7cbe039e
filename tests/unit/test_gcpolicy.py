"""The hub's collector policy (freight.hub.gcpolicy): what survived a full
collection is frozen, and cyclic garbage among frozen objects is collected
at the next thaw, not leaked."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from freight.hub.gcpolicy import FrozenOld
from tests.support import Clock


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


@pytest.fixture
def thawed() -> Iterator[None]:
    """Leave the process's collector as the test found it: nothing frozen."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


def test_a_full_collection_is_followed_by_a_freeze(thawed: None) -> None:
    clock = Clock()
    policy = FrozenOld(clock, thaw_every=300)
    policy.check()
    assert (policy.freezes, gc.get_freeze_count()) == (0, 0)  # no full collection yet
    gc.collect()
    policy.check()
    assert policy.freezes == 1
    assert gc.get_freeze_count() > 0
    policy.check()
    assert policy.freezes == 1  # once per full collection


def test_garbage_among_frozen_objects_goes_at_the_thaw(thawed: None) -> None:
    clock = Clock()
    policy = FrozenOld(clock, thaw_every=300)
    node = Node()
    gone = weakref.ref(node)
    gc.collect()
    policy.check()  # `node` is frozen now
    del node
    gc.collect()
    assert gone() is not None  # frozen: the collector does not see it
    clock.now += 299
    policy.check()
    assert gone() is not None and policy.thaws == 0
    clock.now += 1
    policy.check()
    assert gone() is None  # thawed and collected
    assert policy.thaws == 1
    assert gc.get_freeze_count() > 0  # and what lives is frozen again
