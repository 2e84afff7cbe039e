"""Message bodies sealed between two hosts: round trips, one key per
direction, and any change to the routing header or the payload breaks the
open."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.errors import IntegrityError
from freight.protocol.msgkeys import host_id
from freight.protocol.msgseal import (
    MAX_MESSAGE_BODY,
    SEAL_OVERHEAD,
    aad,
    new_host_key,
    open_body,
    pair_keys,
    public_bytes,
    seal_body,
)

A, B = new_host_key(), new_host_key()
HID_A, HID_B = host_id(public_bytes(A)), host_id(public_bytes(B))
A_KEYS = pair_keys(A, public_bytes(B))  # (a -> b, b -> a) as a sees them
B_KEYS = pair_keys(B, public_bytes(A))


@dataclasses.dataclass(frozen=True)
class Header:
    mid: str = "0123456789abcdef" * 2
    sender: str = HID_A
    receiver: str = HID_B
    type_: int = 0x12340000
    app: str = "sensors"
    ticket: str = HID_B + ".1"
    from_ticket: str = HID_A + ".2"
    reply_to: str = ""

    def bytes(self) -> bytes:
        return aad(
            self.mid,
            self.sender,
            self.receiver,
            self.type_,
            self.app,
            self.ticket,
            self.from_ticket,
            self.reply_to,
        )


def test_both_ends_derive_the_same_key_per_direction_and_directions_differ() -> None:
    a_to_b, b_to_a = A_KEYS
    assert (b_to_a, a_to_b) == B_KEYS
    assert a_to_b != b_to_a
    assert len(a_to_b) == 32


def test_round_trip_and_the_payload_is_not_the_body() -> None:
    body = b"calibrate sensor 7" * 4
    sealed = seal_body(A_KEYS[0], body, Header().bytes())
    assert len(sealed) == len(body) + SEAL_OVERHEAD
    assert body not in sealed
    assert open_body(B_KEYS[1], sealed, Header().bytes()) == body


def test_the_reverse_direction_key_does_not_open() -> None:
    sealed = seal_body(A_KEYS[0], b"x", Header().bytes())
    with pytest.raises(IntegrityError):
        open_body(A_KEYS[1], sealed, Header().bytes())


def test_a_third_host_cannot_open() -> None:
    c = new_host_key()
    sealed = seal_body(A_KEYS[0], b"secret", Header().bytes())
    c_from_a = pair_keys(c, public_bytes(A))[1]
    with pytest.raises(IntegrityError):
        open_body(c_from_a, sealed, Header().bytes())


CHANGES: dict[str, Any] = {
    "mid": "f" * 32,
    "sender": "1" * 32,
    "receiver": "2" * 32,
    "type_": 0x12340001,
    "app": "sensorz",
    "ticket": HID_B + ".3",
    "from_ticket": "",
    "reply_to": "e" * 32,
}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_changing_any_header_field_breaks_the_open(field: str) -> None:
    sealed = seal_body(A_KEYS[0], b"body", Header().bytes())
    changed = dataclasses.replace(Header(), **{field: CHANGES[field]})
    with pytest.raises(IntegrityError, match="does not verify"):
        open_body(B_KEYS[1], sealed, changed.bytes())


def test_fields_cannot_be_shifted_across_the_separators() -> None:
    one = Header(app="ab", ticket="")
    two = Header(app="a", ticket="b")
    assert one.bytes() != two.bytes()


def test_sizes_and_malformed_ids() -> None:
    with pytest.raises(IntegrityError, match="at most"):
        seal_body(A_KEYS[0], bytes(MAX_MESSAGE_BODY + 1), Header().bytes())
    assert len(seal_body(A_KEYS[0], bytes(MAX_MESSAGE_BODY), Header().bytes())) == (
        MAX_MESSAGE_BODY + SEAL_OVERHEAD
    )
    with pytest.raises(IntegrityError, match="wrong size"):
        open_body(B_KEYS[1], b"short", Header().bytes())
    with pytest.raises(IntegrityError, match="hex"):
        aad("zz" * 16, HID_A, HID_B, 1, "a")
    with pytest.raises(IntegrityError, match="16 bytes"):
        aad("ab", HID_A, HID_B, 1, "a")


@settings(max_examples=100, deadline=None)
@given(
    body=st.binary(max_size=4096),
    mid=st.binary(min_size=16, max_size=16),
    type_=st.integers(1, 0xFFFFFFFF),
    app=st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
    flip=st.integers(0, 10_000),
)
def test_round_trips_and_any_flipped_bit_fails(
    body: bytes, mid: bytes, type_: int, app: str, flip: int
) -> None:
    header = Header(mid=mid.hex(), type_=type_, app=app).bytes()
    sealed = seal_body(A_KEYS[0], body, header)
    assert open_body(B_KEYS[1], sealed, header) == body
    bad = bytearray(sealed)
    bad[flip % len(bad)] ^= 1 << (flip % 8)
    with pytest.raises(IntegrityError):
        open_body(B_KEYS[1], bytes(bad), header)
