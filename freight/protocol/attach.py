"""The HTTP attachment's reliability layer, both halves (docs/protocol.md §14).

An HTTP attachment carries frames over plain HTTP requests: the hub's in one
long ``GET …/down`` response at a time, the client's in ``POST …/up``
bodies, one at a time. Proxies cut responses and reset connections, so each
direction numbers its frames:

* **Down** (hub → client). The hub keeps every frame it sent in an
  :class:`Outbox` until the client acknowledges it (``ack=N`` on any
  request: the client holds frames ``0 … N-1``); a new GET replays from the
  first frame not acknowledged. The client's :class:`Inflow` counts the
  frames it took whole, which is the ``ack`` it sends.
* **Up** (client → hub). The client keeps its frames in an :class:`Outbox`
  until a POST carrying them is answered; ``seq=K`` numbers the body's first
  frame, so a POST sent again after a failure repeats the same numbers and
  the hub's :class:`Inflow` skips what it already has.

:class:`HubAttachment` and :class:`ClientAttachment` are the two halves, in
the style of :mod:`.stream`: sans-I/O, time passed in, one transition table
each, ``(state, input) -> state``; an input not in the table (or a number
that breaks the rules above) raises a typed error and leaves the machine in
``ERROR`` for good. Timers: ``next_deadline()`` says when to call
``handle_timer(now)``.
"""

from __future__ import annotations

import collections
import enum
from typing import Final

from .errors import LocalProtocolError, ProtocolError
from .frames import FrameDecoder, encode_frame
from .messages import Ping
from .numbered import AttachError, BodyFrames, Frame, Inflow, Outbox, Watermarks

__all__ = [
    "AttachError",
    "AttachState",
    "BodyFrames",
    "ClientAttachment",
    "HubAttachment",
    "Inflow",
    "Outbox",
    "Watermarks",
]

MiB: Final = 1024 * 1024
PING_FRAME: Final = encode_frame(Ping())

# The hub: frames sent but not acknowledged (what a replay needs) before its
# senders wait, and frames received but not yet taken by its service before
# it stops reading an up body.
DOWN_WINDOW_BYTES: Final = 8 * MiB
INBOX_BYTES: Final = 8 * MiB
INBOX_FRAMES: Final = 8
# The client: frames queued but not yet taken by the hub before send() waits;
# one up POST carries at most UPLOAD_BATCH_BYTES (one larger frame goes
# alone), halved after a failed POST down to MIN_BATCH_BYTES and doubled back
# after each good one.
SEND_QUEUE_BYTES: Final = 8 * MiB
UPLOAD_BATCH_BYTES: Final = 4 * MiB
MIN_BATCH_BYTES: Final = 64 * 1024
# Frames taken from the down stream are acknowledged on the next request, or
# by an ack-only POST once ACK_BYTES or ACK_DELAY seconds went unacknowledged.
ACK_BYTES: Final = 1 * MiB
ACK_DELAY: Final = 0.5


class AttachState(enum.Enum):
    IDLE = "idle"  # no down response open
    STREAMING = "streaming"  # a down response is open
    CLOSING = "closing"  # client: ended locally, queued frames still go up
    CLOSED = "closed"
    ERROR = "error"


# --- the common machine ---------------------------------------------------------------


class _Machine:
    _table: dict[tuple[AttachState, str], AttachState]

    def __init__(self) -> None:
        self.state = AttachState.IDLE
        self.error: ProtocolError | None = None

    def _step(self, event: str) -> None:
        """Apply ``event`` to the table, or fail for good."""
        if self.error is not None:
            raise self.error
        nxt = self._table.get((self.state, event))
        if nxt is None:
            raise self._fail(
                LocalProtocolError(f"{event!r} is not allowed in state {self.state.value}")
            )
        self.state = nxt

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        """Enter ERROR for good; returns ``exc`` for the caller to raise."""
        self.state = AttachState.ERROR
        self.error = exc
        return exc

    @property
    def closed(self) -> bool:
        return self.state in (AttachState.CLOSED, AttachState.ERROR)


S = AttachState
_OPEN: Final = (S.IDLE, S.STREAMING)


def _same(
    events: tuple[str, ...], states: tuple[AttachState, ...]
) -> dict[tuple[AttachState, str], AttachState]:
    return {(state, event): state for event in events for state in states}


# --- the hub's half ---------------------------------------------------------------------

_HUB_TABLE: Final[dict[tuple[AttachState, str], AttachState]] = {
    **_same(("send", "up_begin", "up_frame", "ping"), _OPEN),
    **_same(("ack", "recv", "down_next", "down_close"), (*_OPEN, S.CLOSED)),
    (S.IDLE, "down_open"): S.STREAMING,
    (S.STREAMING, "down_open"): S.STREAMING,
    (S.CLOSED, "down_open"): S.CLOSED,
    (S.STREAMING, "down_last_close"): S.IDLE,
    (S.CLOSED, "down_last_close"): S.CLOSED,
    (S.IDLE, "grace_over"): S.CLOSED,
    **{(state, "close"): S.CLOSED for state in (*_OPEN, S.CLOSED)},
}


class HubAttachment(_Machine):
    """The hub's half of one attachment.

    Down: :meth:`send` queues a frame; each down response is opened with
    :meth:`down_open` (its ``ack``, None for a client that does not
    acknowledge) and writes what :meth:`down_next` hands out: a frame, a
    Ping (at its start and after ``keepalive`` seconds without a frame),
    None for "wait", or END. Up: :meth:`up_begin` per POST, then per frame
    of its body :meth:`up_fresh` / :meth:`up_deliver` / :meth:`up_skip`;
    :meth:`recv` takes frames in order. No down response for ``grace``
    seconds ends the attachment (the client vanished)."""

    _table = _HUB_TABLE
    END: Final = b""  # down_next(): the response is superseded, or the attachment is over

    def __init__(
        self,
        now: float,
        *,
        keepalive: float,
        grace: float,
        window: int = DOWN_WINDOW_BYTES,
        inbox_bytes: int = INBOX_BYTES,
        inbox_frames: int = INBOX_FRAMES,
    ) -> None:
        super().__init__()
        self.keepalive = keepalive
        self.grace = grace
        self.reason = ""  # why it closed
        self.out: Outbox[bytes] = Outbox(window)
        self.inflow = Inflow()
        self.inbox: collections.deque[Frame] = collections.deque()
        self.inbox_bytes = 0
        self._inbox_max = (inbox_frames, inbox_bytes)
        self._response = 0  # the id of the down response allowed to write
        self._writers = 0  # responses still open (an old one may be ending)
        self._cursor = 0  # the number of the next frame the response writes
        self._replay = True
        self._ping_due = False
        self._last_write = now
        self._idle_since = now

    # --- down ---------------------------------------------------------------------

    @property
    def window_full(self) -> bool:
        """Senders wait: too many bytes sent and not acknowledged."""
        return self.out.bytes.full

    def send(self, frame: bytes) -> None:
        self._step("send")
        self.out.push(frame, len(frame))

    def acknowledge(self, ack: int) -> None:
        """The client holds frames ``0 … ack-1``."""
        self._step("ack")
        try:
            self.out.release(ack)
        except AttachError as exc:
            raise self._fail(exc) from None

    def down_open(self, ack: int | None, now: float) -> int:
        """A new down response takes over (the one before must end). Returns
        its id, for :meth:`down_next` and :meth:`down_close`."""
        if ack is not None:
            self.acknowledge(ack)
        self._step("down_open")
        self._response += 1
        self._writers += 1
        self._cursor = self.out.base
        self._replay = ack is not None
        self._ping_due = True  # each response starts with a Ping
        self._last_write = now
        return self._response

    def down_next(self, response: int, now: float) -> bytes | None:
        """What ``response`` writes next: a frame, :data:`PING_FRAME`,
        None (nothing yet: wait for a change or the deadline) or :attr:`END`."""
        if self.state is S.ERROR:
            return self.END
        self._step("down_next")
        if response != self._response:
            return self.END
        if self._ping_due:
            self._ping_due = False
            self._last_write = now
            return PING_FRAME
        cursor = max(self._cursor, self.out.base)
        if cursor < self.out.end:
            frame = self.out.get(cursor)
            self._cursor = cursor + 1
            self._last_write = now
            if not self._replay:  # a frame counts as delivered once written
                self.out.release(self._cursor)
            return frame
        if self.state is S.CLOSED:
            return self.END  # everything sent was written: the response ends
        return None

    def down_end(self) -> None:
        """End the current down response at a frame boundary; the client
        asks again and is replayed what it has not acknowledged."""
        self._response += 1

    def down_close(self, response: int, now: float) -> None:
        """``response`` is over (ended, superseded, or its client went)."""
        if response == self._response:
            self._response += 1
        self._writers -= 1
        if self.state is S.ERROR:
            return
        if self._writers:
            self._step("down_close")
        else:
            self._step("down_last_close")
            self._idle_since = now

    # --- up -------------------------------------------------------------------------

    def up_begin(self, seq: int | None) -> int:
        """An up body whose first frame is numbered ``seq`` (None: it
        follows the last one); an older body still being read is dropped."""
        self._step("up_begin")
        try:
            return self.inflow.begin(seq)
        except AttachError as exc:
            raise self._fail(exc) from None

    @property
    def inbox_full(self) -> bool:
        frames, nbytes = self._inbox_max
        return len(self.inbox) >= frames or self.inbox_bytes >= nbytes

    def up_fresh(self, body: int) -> bool:
        """Whether the next frame of ``body`` is new: if so, wait for
        ``not inbox_full`` and :meth:`up_deliver` it, else :meth:`up_skip` it."""
        return self.inflow.fresh(body)

    def up_skip(self, body: int) -> None:
        self._step("up_frame")
        self.inflow.took(body, False)

    def up_deliver(self, body: int, frame: Frame) -> None:
        self._step("up_frame")
        if not self.inflow.fresh(body):
            return  # a newer body took over while this one waited
        self.inflow.took(body, True)
        if not isinstance(frame[0], Ping):
            self.inbox.append(frame)
            self.inbox_bytes += len(frame[1])

    def recv(self) -> Frame | None:
        """The next frame from the client, None if none waits (frames that
        arrived before the attachment ended, or failed, are still handed out)."""
        if self.state is not S.ERROR:
            self._step("recv")
        if not self.inbox:
            return None
        frame = self.inbox.popleft()
        self.inbox_bytes -= len(frame[1])
        return frame

    # --- ending and timers ---------------------------------------------------------------

    def close(self, reason: str) -> None:
        """End the attachment; frames already sent still go to a down
        response that is open now, frames received are still handed out."""
        if self.closed:
            return
        self._step("close")
        self.reason = reason

    def next_deadline(self) -> float | None:
        if self.state is S.STREAMING:
            return None if self._ping_due else self._last_write + self.keepalive
        if self.state is S.IDLE:
            return self._idle_since + self.grace
        return None

    def handle_timer(self, now: float) -> bool:
        """True when something is due: a Ping on an idle response (the
        writer's :meth:`down_next` hands it out), or the end (the client is
        gone: ``closed``, with ``reason``)."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return False
        if self.state is S.STREAMING:
            self._step("ping")
            self._ping_due = True
        else:
            self._step("grace_over")
            self.reason = f"no down request for {self.grace:g} s: client gone"
        return True


# --- the client's half ---------------------------------------------------------------------

_CLIENT_TABLE: Final[dict[tuple[AttachState, str], AttachState]] = {
    **_same(("send",), _OPEN),
    **_same(("up_batch", "up_done", "up_failed", "ack"), (*_OPEN, S.CLOSING)),
    **_same(("recv",), (*_OPEN, S.CLOSING)),
    **_same(("down_data",), (S.STREAMING, S.CLOSING)),
    (S.IDLE, "down_open"): S.STREAMING,
    (S.STREAMING, "down_open"): S.STREAMING,
    (S.CLOSING, "down_open"): S.CLOSING,
    (S.STREAMING, "down_end"): S.IDLE,
    (S.IDLE, "down_end"): S.IDLE,
    (S.CLOSING, "down_end"): S.CLOSING,
    (S.CLOSED, "down_end"): S.CLOSED,
    (S.IDLE, "close"): S.CLOSING,
    (S.STREAMING, "close"): S.CLOSING,
    **{(state, "end"): S.CLOSED for state in (*_OPEN, S.CLOSING, S.CLOSED)},
}


class ClientAttachment(_Machine):
    """The client's half of one attachment.

    Up: :meth:`send` queues a frame (wait while ``queue_full``);
    :meth:`up_batch` is the next POST's ``seq`` and body, :meth:`up_done`
    or :meth:`up_failed` what became of it. Down: :meth:`down_open` before
    a GET (its ``ack``), :meth:`down_data` with the bytes of the response,
    :meth:`next_frame` for the frames (Pings skipped), :meth:`down_end` when
    it ends or breaks (a frame cut in half is replayed by the next one).
    Acks: :meth:`take_ack` puts one on a request; ``next_deadline()`` is
    when an ack-only POST is due, and a down response without a byte until
    :meth:`stall_deadline` is dead."""

    _table = _CLIENT_TABLE

    def __init__(
        self, now: float, *, keepalive: float, queue_bytes: int = SEND_QUEUE_BYTES
    ) -> None:
        super().__init__()
        self.keepalive = keepalive
        self.pings = 0  # Pings seen on the down stream (for diagnostics)
        self.queue: Outbox[tuple[bytes, bytes]] = Outbox(queue_bytes)
        self.batch_cap = UPLOAD_BATCH_BYTES
        self.inflow = Inflow()
        self._decoder = FrameDecoder()
        self._body = 0
        self._unacked_bytes = 0
        self._ack_due: float | None = None
        # No down byte (not even a Ping) for this long: the path is dead.
        self.stall = 2 * keepalive + 10
        self._last_byte = now

    # --- up -------------------------------------------------------------------------

    @property
    def queue_full(self) -> bool:
        return self.queue.bytes.full

    def send(self, head: bytes, payload: bytes) -> None:
        self._step("send")
        self.queue.push((head, payload), len(head) + len(payload))

    def up_batch(self) -> tuple[int, int, bytes] | None:
        """``(seq, count, body)`` of the next frame POST, None if nothing is queued."""
        self._step("up_batch")
        if not self.queue:
            return None
        _, items = self.queue.head(self.batch_cap)
        body = b"".join(piece for item in items for piece in item)
        return self.queue.base, len(items), body

    def up_done(self, seq: int, count: int) -> None:
        """The hub took the ``count`` frames of the POST from ``seq``."""
        self._step("up_done")
        self.batch_cap = min(UPLOAD_BATCH_BYTES, 2 * self.batch_cap)
        try:
            self.queue.release(seq + count)
        except AttachError as exc:  # our own bookkeeping broke
            raise self._fail(LocalProtocolError(exc.message)) from None

    def up_failed(self) -> None:
        """A POST failed (a proxy may cut or refuse big bodies): the next
        try sends a smaller head from the same ``seq``."""
        self._step("up_failed")
        self.batch_cap = max(MIN_BATCH_BYTES, self.batch_cap // 2)

    # --- down -----------------------------------------------------------------------

    def take_ack(self) -> int:
        """The ack to put on a request; it covers every frame taken so far."""
        self._step("ack")
        self._unacked_bytes = 0
        self._ack_due = None
        return self.inflow.next

    def down_open(self, now: float) -> int:
        """Before a GET: the ``ack`` it carries, which also numbers the
        first frame of its response."""
        ack = self.take_ack()
        self._step("down_open")
        self._body = self.inflow.begin(ack)
        self._decoder = FrameDecoder()
        self._last_byte = now
        return ack

    def down_data(self, chunk: bytes, now: float) -> None:
        self._step("down_data")
        self._last_byte = now
        try:
            self._decoder.feed(chunk)
        except ProtocolError as exc:
            raise self._fail(exc) from None

    def next_frame(self, now: float) -> Frame | None:
        """The next new frame of the down stream, None when more bytes are needed."""
        self._step("recv")
        while True:
            try:
                frame = self._decoder.next_frame()
            except ProtocolError as exc:
                raise self._fail(exc) from None
            if frame is None:
                return None
            if isinstance(frame[0], Ping):
                self.pings += 1
                continue
            fresh = self.inflow.fresh(self._body)
            self.inflow.took(self._body, fresh)
            if fresh:
                self._unacked_bytes += len(frame[1])
                if self._unacked_bytes >= ACK_BYTES:
                    self._ack_due = now
                elif self._ack_due is None:
                    self._ack_due = now + ACK_DELAY
                return frame

    def down_end(self) -> None:
        """The down response ended, broke or stalled: forget its partial frame."""
        self._step("down_end")
        self._decoder = FrameDecoder()
        self._body = 0

    def stall_deadline(self) -> float:
        return self._last_byte + self.stall

    # --- ending and timers ---------------------------------------------------------------

    def close(self) -> None:
        """Ended locally: frames queued still go up, nothing more is queued."""
        self._step("close")

    def end(self) -> None:
        """The attachment is over."""
        if self.state is not S.ERROR:
            self._step("end")

    def next_deadline(self) -> float | None:
        """When an ack-only POST is due (None: no frame awaits acknowledgement)."""
        return None if self.closed else self._ack_due

    def handle_timer(self, now: float) -> bool:
        """True when an ack-only POST is due now (put :meth:`take_ack` on it)."""
        return self._ack_due is not None and now >= self._ack_due and not self.closed
