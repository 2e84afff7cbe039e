"""Numbered frames: the pieces each direction of an HTTP attachment is made
of (:mod:`.attach` joins them into the two halves). The sending end keeps
its frames in an :class:`Outbox` until the other end has them; the
receiving end's :class:`Inflow` counts what it took and skips repeats.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Generic, TypeVar

from .errors import RemoteProtocolError
from .frames import FrameDecoder
from .messages import AnyMessage

Frame = tuple[AnyMessage, bytes]
T = TypeVar("T")


class AttachError(RemoteProtocolError):
    """The other half of an HTTP attachment broke its numbering: an ``ack``
    of frames never sent, or an up body whose ``seq`` leaves a gap."""

    code = "attach_sequence"


class Watermarks:
    """Bytes held, with high and low water marks: ``full`` once ``high``
    bytes are held, and again not full only once down to ``low`` (so a
    waiting producer is not woken for every frame taken)."""

    __slots__ = ("full", "held", "high", "low")

    def __init__(self, high: int, low: int | None = None) -> None:
        self.high = high
        self.low = high // 2 if low is None else low
        self.held = 0
        self.full = False

    def add(self, n: int) -> None:
        self.held += n
        if self.held >= self.high:
            self.full = True

    def release(self, n: int) -> None:
        self.held -= n
        if self.full and self.held <= self.low:
            self.full = False


class Outbox(Generic[T]):
    """The sending end of one direction: frames numbered from ``base`` on,
    kept until the other half has them, bounded in bytes."""

    __slots__ = ("_items", "_sizes", "base", "bytes")

    def __init__(self, high: int, low: int | None = None) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()
        self.base = 0
        self.bytes = Watermarks(high, low)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def end(self) -> int:
        """The number the next frame pushed gets."""
        return self.base + len(self._items)

    def push(self, item: T, size: int) -> None:
        self._items.append(item)
        self._sizes.append(size)
        self.bytes.add(size)

    def get(self, number: int) -> T:
        return self._items[number - self.base]

    def release(self, upto: int) -> int:
        """The other half has every frame below ``upto``: forget them.
        A stale number (below ``base``) changes nothing; one beyond what was
        pushed raises :class:`AttachError`. Returns how many were forgotten."""
        if upto > self.end:
            raise AttachError(f"ack={upto} counts frames never sent (only {self.end} were)")
        count = 0
        while self.base < upto:
            self._items.popleft()
            self.bytes.release(self._sizes.popleft())
            self.base += 1
            count += 1
        return count

    def head(self, cap: int) -> tuple[int, list[T]]:
        """The first frames up to ``cap`` bytes (at least one) and their size."""
        items: list[T] = []
        size = 0
        for item, n in zip(self._items, self._sizes, strict=True):
            if items and size + n > cap:
                break
            items.append(item)
            size += n
        return size, items


class Inflow:
    """The receiving end of one direction: ``next`` is the number of the
    next new frame, which is also the ``ack`` that covers everything taken.
    Each body (an up POST, a down response) has its own cursor, starting at
    the number of its first frame; frames below ``next`` are repeats."""

    __slots__ = ("_body", "_index", "next")

    def __init__(self) -> None:
        self.next = 0
        self._index = 0
        self._body = 0  # which body is current; an older one is dropped

    def begin(self, first: int | None) -> int:
        """A new body whose first frame is numbered ``first`` (None: it
        follows the last one). Returns its id for :meth:`fresh`/:meth:`took`."""
        if first is None:
            first = self.next
        if first > self.next:
            raise AttachError(f"frames {self.next}..{first - 1} never arrived")
        self._index = first
        self._body += 1
        return self._body

    def fresh(self, body: int) -> bool:
        """Whether the next frame of ``body`` is new (not a repeat, and
        ``body`` not superseded by a newer one)."""
        return body == self._body and self._index == self.next

    def took(self, body: int, fresh: bool) -> None:
        """The next frame of ``body`` was handled: delivered if ``fresh``."""
        if body != self._body:
            return
        self._index += 1
        if fresh:
            self.next += 1


class BodyFrames:
    """Splits one up body into frames and tells a body that stops inside a
    frame (whose header the decoder may already have taken) from one that
    ends on a frame boundary."""

    __slots__ = ("_decoder", "_inside")

    def __init__(self) -> None:
        self._decoder = FrameDecoder()
        self._inside = False  # a header was taken, its payload not yet complete

    def feed(self, chunk: bytes) -> Iterator[Frame]:
        self._decoder.feed(chunk)
        while True:
            before = self._decoder.buffered
            frame = self._decoder.next_frame()
            if frame is None:
                self._inside = self._inside or self._decoder.buffered < before
                return
            self._inside = False
            yield frame

    def finish(self) -> None:
        if self._inside or self._decoder.buffered:
            raise RemoteProtocolError("the body ends inside a frame")
