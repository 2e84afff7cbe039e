"""Folder listings in pages, and agent results that always fit a frame."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from freight.agent.daemon import sendable
from freight.agent.files import COMMAND_PAGE_BYTES, list_dir, page
from freight.errors import UsageError
from freight.protocol import messages as m
from freight.protocol.files import Entry
from freight.protocol.frames import decode_frame, encode_frame, encode_json
from freight.protocol.limits import MAX_HEADER_BYTES

# Names that grow most when escaped: quotes and backslashes (twice: in the
# result's JSON, then in the header's), and characters JSON writes as \\uXXXX.
NASTY = ['"' * 200, "\\" * 200, "\x01" * 200, "é" * 120, "日本" * 40]


def entries(n: int) -> list[Entry]:
    return [
        Entry(name=f"{i:05d}{NASTY[i % len(NASTY)]}", type="file", size=i, mtime=1.5, mode=420)
        for i in range(n)
    ]


def test_pages_cover_every_entry_once_and_each_fits_a_command_frame() -> None:
    all_entries = entries(2000)
    seen: list[object] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        p = page("/d", all_entries, offset, COMMAND_PAGE_BYTES)
        assert p.offset == offset and p.total == 2000 and p.entries
        result = m.CommandResult(id=2**40, ok=True, result=json.dumps(msgspec.to_builtins(p)))
        frame = encode_frame(result)
        assert len(encode_json(result)) <= MAX_HEADER_BYTES
        assert decode_frame(frame)[0] == result  # the hub can read it
        seen += p.entries
        offset = p.next
        pages += 1
    assert seen == all_entries and pages > 1


def test_an_entry_larger_than_the_budget_still_makes_progress() -> None:
    one = entries(3)
    p = page("/d", one, 1, budget=10)
    assert p.entries == [one[1]] and p.next == 2


def test_an_offset_outside_the_listing_is_refused() -> None:
    with pytest.raises(UsageError, match="outside the 3 entries"):
        page("/d", entries(3), 4, COMMAND_PAGE_BYTES)


def test_list_dir_pages_a_real_folder(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i:02d}").write_bytes(b"x" * i)
    first = list_dir(str(tmp_path), [tmp_path], 0, budget=500)
    rest = list_dir(str(tmp_path), [tmp_path], first["next"], budget=100_000)
    names = [e["name"] for e in first["entries"] + rest["entries"]]
    assert names == [f"f{i:02d}" for i in range(50)] and rest["next"] is None


def test_a_result_too_large_for_a_frame_becomes_a_failure_that_fits() -> None:
    big = m.CommandResult(id=7, ok=True, result=json.dumps({"x": '"' * 40_000}))
    assert len(encode_json(big)) > MAX_HEADER_BYTES  # would cut the agent's channel
    sent = sendable(big)
    assert sent.id == 7 and not sent.ok
    assert "more than a command result may" in json.loads(sent.result)["error"]
    assert decode_frame(encode_frame(sent))[0] == sent
    small = m.CommandResult(id=8, ok=True, result="{}")
    assert sendable(small) is small
