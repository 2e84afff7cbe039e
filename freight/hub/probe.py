"""The hub's end of the bandwidth probe (docs/protocol.md "20. Bandwidth
probe"): it answers pings, timestamps the trains clients send, and sends
trains to clients that ask. Every decision is the
:class:`~freight.protocol.probe.ProbeResponder`'s; this module moves bytes
and reads the clock.

Bounds: one responder per channel (kept only as long as the channel
lives), one train at a time on it, and at most :data:`TRAINS_PER_ACCOUNT`
trains sent to one account and :data:`TRAINS_PER_HUB` in all at once; a
request beyond them is answered ``busy``.
"""

from __future__ import annotations

import os
import time
import weakref
from collections import Counter
from typing import Any, Final

from ..protocol import messages as m
from ..protocol.probe import ProbeResponder, SendTrain
from ..transport.shallow import shallow_writes
from .dispatch import Dispatcher, Link, Scope

TRAINS_PER_ACCOUNT: Final = 2
TRAINS_PER_HUB: Final = 8


class ProbeService:
    def __init__(self, *, per_account: int = TRAINS_PER_ACCOUNT, per_hub: int = TRAINS_PER_HUB):
        self.per_account = per_account
        self.per_hub = per_hub
        # One responder per channel, gone with the channel.
        self._responders: weakref.WeakKeyDictionary[Any, ProbeResponder] = (
            weakref.WeakKeyDictionary()
        )
        self._sending: Counter[str] = Counter()

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register(m.Probe, self.request, Scope.DATA)
        dispatcher.register(m.ProbeData, self.data, Scope.DATA)

    def _responder(self, link: Link) -> ProbeResponder:
        found = self._responders.get(link.chan)
        if found is None:
            found = self._responders[link.chan] = ProbeResponder()
        return found

    async def request(self, link: Link, msg: m.Probe, payload: bytes) -> None:
        answer = self._responder(link).request(msg)
        if isinstance(answer, SendTrain):
            await self._send_train(link, answer)
        else:
            await link.chan.send(answer)

    async def data(self, link: Link, msg: m.ProbeData, payload: bytes) -> None:
        self._responder(link).data(msg, len(payload), time.monotonic())

    async def _send_train(self, link: Link, train: SendTrain) -> None:
        account = link.user.name
        if self._sending[account] >= self.per_account or self._sending.total() >= self.per_hub:
            await link.chan.send(
                m.Error(
                    code="busy",
                    message="the hub is sending as many probe trains as it may; try again shortly",
                    rid=train.pid,
                )
            )
            return
        self._sending[account] += 1
        try:
            # Random filler: a WebSocket that compresses must not shrink it.
            filler = os.urandom(train.size)
            record = 0
            with shallow_writes(link.chan):
                end = time.monotonic() + train.seconds
                while time.monotonic() < end:
                    await link.chan.send(
                        m.ProbeData(pid=train.pid, seq=record, len=len(filler)), filler
                    )
                    record += 1
            await link.chan.send(m.ProbeReport(pid=train.pid, op="down", records=record))
        finally:
            self._sending[account] -= 1
            if not self._sending[account]:
                del self._sending[account]
