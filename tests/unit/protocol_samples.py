"""Sample messages shared by the protocol unit tests: at least one of every type."""

from __future__ import annotations

import typing

import xxhash

from freight.protocol import messages as m
from freight.protocol.batch import BatchEntry, encode_batch, encode_request

SID = "s-1"
CID = "c-0123abcd"


def data_msg(raw: bytes, *, offset: int = 0, seq: int = 0, sid: str = SID) -> tuple[m.Data, bytes]:
    """An honest uncompressed Data frame carrying ``raw``."""
    msg = m.Data(
        sid=sid,
        seq=seq,
        offset=offset,
        raw=len(raw),
        codec=m.CODEC_NONE,
        xxh=xxhash.xxh3_64_intdigest(raw),
        len=len(raw),
    )
    return msg, raw


SAMPLES: list[tuple[m.Message, bytes]] = [
    (m.Hello(version=1, agent="freight/0.1 (linux)"), b""),
    (m.Welcome(version=1, node="hub-münchen"), b""),
    (m.TicketRequest(rid="r.1:x-y_z"), b""),
    (m.TicketGrant(rid="r1", ticket="00ff" * 4, secret="ab" * 32, expires_in=30.5), b""),
    (m.Error(code="not_found", message="no such file: ü.txt"), b""),
    (m.Error(code="bad", message="stream failed", sid=SID), b""),
    (m.Pull(sid=SID, name="dir/file name with spaces.bin"), b""),
    (
        m.StartStream(
            sid=SID, name="a.bin", size=10, mtime=1.7e9, want_level=m.LEVEL_MAX, fresh=True
        ),
        b"",
    ),
    (
        m.StartStreamAck(sid=SID, level="fast", rate=10**6, checkpoint=4, prefix_digest="0a" * 32),
        b"",
    ),
    data_msg(b"hello world"),
    (m.Data(sid=SID, seq=3, offset=7, raw=100, codec=m.CODEC_ZSTD, xxh=2**64 - 1, len=0), b""),
    (m.KeepAlive(sid=SID, offset=8 * 1024 * 1024), b""),
    (m.KeepAliveAck(sid=SID, checkpoint=5, rate=0, level="none"), b""),
    (m.EndStream(sid=SID, total=10, digest="f" * 64), b""),
    (m.EndStreamAck(sid=SID, total=10, verified=True, digest="f" * 64), b""),
    (m.Abort(sid=SID, code="disk_full", message="no space left"), b""),
    encode_batch(
        SID,
        [BatchEntry(name="d/a.txt", size=5, mtime=1.5, digest="a" * 64)],
        [b"hello"],
    ),
    (m.PutFilesAck(sid=SID, stored=1, rate=0), b""),
    encode_request(SID, ["d/a.txt", "b"]),
    (m.Ping(), b""),
    # Relay: requests, answers and end-to-end records of connection CID.
    (m.TicketRequest(rid="r2", lane=True), b""),
    (m.Error(code="no_listener", message="bob is not listening for ssh", rid="r5"), b""),
    (m.Listen(rid="r3", app="ssh", peer="alice"), b""),
    (m.Unlisten(rid="r4", app="ssh"), b""),
    (m.Done(rid="r3"), b""),
    (m.Dial(rid="r5", cid=CID, peer="bob", app="ssh", role="accept", rejoin=True), b""),
    (m.Offer(rid="r6", nameplate="", ttl=600.0), b""),
    (m.CodeGrant(rid="r6", nameplate="42", expires_in=599.5), b""),
    (m.Claim(rid="r7", cid=CID, nameplate="42"), b""),
    (m.CodeFailed(cid=CID), b""),
    (m.CodeOk(cid=CID), b""),
    (m.Waiting(rid="r7", cid=CID), b""),
    (
        m.Linked(
            cid=CID,
            peer="bob",
            app="code:42",
            role="dial",
            window=1 << 20,
            rid="r7",
            keys=["ab" * 32, "0f" * 32],
            rejoined=True,
            me="alice",
            hub="SHA256:" + "ab" * 32,
        ),
        b"",
    ),
    (m.Relay(cid=CID, kind="h", len=65), bytes(range(65))),
    (m.Relay(cid=CID, kind="d", seq=2**64 - 1, len=17), b"\xff" * 17),
    (m.Relay(cid=CID, kind="a", seq=3, len=24), b"\x00" * 24),
    (m.Pause(cid=CID), b""),
    (m.Resume(cid=CID), b""),
    (m.Hangup(cid=CID, code="peer_gone", message="the other end went away", by="hub"), b""),
    (m.Command(id=7, kind="list_dir", args='{"path": "/data"}'), b""),
    (m.CommandAck(id=7), b""),
    (m.CommandResult(id=7, ok=True, result='{"entries": []}'), b""),
    # Messaging: a host announcing itself, resolving, sending, delivering.
    (
        m.MsgHello(
            rid="r8",
            key="1a" * 32,
            sig="2b" * 64,
            identity="3c" * 32,
            regs=[
                m.MsgReg(app="sensors", interest=0xFFFF0000),
                m.MsgReg(app="x", interest=1, peer="bob"),
            ],
        ),
        b"",
    ),
    (m.MsgResolve(rid="r9", dest="*", app="sensors", type=0x00120000), b""),
    (
        m.MsgRoute(
            rid="r9",
            hosts=[
                m.MsgHostInfo(
                    hid="4d" * 16,
                    account="lab-pc-7",
                    key="1a" * 32,
                    sig="2b" * 64,
                    identity="3c" * 32,
                )
            ],
        ),
        b"",
    ),
    (m.MsgRoute(rid="r10", reason="no_interest", message="no registered interest matches"), b""),
    (
        m.MsgSend(
            id="5e" * 16, to="4d" * 16, app="sensors", type=1, from_ticket="4d" * 16 + ".1f", len=44
        ),
        b"\x07" * 44,
    ),
    (
        m.MsgDeliver(
            id="5e" * 16,
            frm="6f" * 16,
            account="admin",
            app="sensors",
            type=0xFFFFFFFF,
            ticket="4d" * 16 + ".2",
            reply_to="70" * 16,
            len=29,
        ),
        b"\x00" * 29,
    ),
    (m.MsgResult(id="5e" * 16, host="4d" * 16, count=2), b""),
    (m.MsgResult(id="5e" * 16, reason="busy", message="sensors is not keeping up"), b""),
    (m.MsgHeld(apps={"chat": "pending", "spam": "refused"}), b""),
    (m.MsgHeld(), b""),
    (m.Probe(pid="p-1", op="up", seconds=2.0, size=65536), b""),
    (m.ProbeData(pid="p-1", seq=3, len=1024), b"\x00" * 1024),
    (m.ProbeReport(pid="p-1", op="end", records=2, samples=[(0, 1024), (950, 2048)]), b""),
]

ALL_MESSAGE_TYPES: tuple[type[m.Message], ...] = typing.get_args(m.AnyMessage)
