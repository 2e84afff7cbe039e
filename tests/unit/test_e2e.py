"""End-to-end encryption of relayed connections, driven through bytes.

The two handshakes are run against each other by passing the messages one
produces (``take``) to the other (``receive``), in every order a relay could
deliver them, and with an attacker's changes on the way. The SecureSession
pair is joined by a simulated relay that loses, repeats and reorders records.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from freight.protocol.e2e import (
    ACCEPT,
    DIAL,
    KIND_ACK,
    MAC_BYTES,
    SIGNATURE_BYTES,
    SPAKE2_BYTES,
    X25519_BYTES,
    CodeHandshake,
    FlowViolation,
    Handshake,
    IdentityHandshake,
    PeerKeyRejected,
    SecureSession,
    SessionKeys,
    WrongCode,
    identity_context,
    load_identity,
    new_identity,
    public_of,
)
from freight.protocol.errors import (
    IntegrityError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)

CODE = "7-crossbow-gazelle"
CONTEXT = b"code:7"
FINGERPRINT = re.compile(r"^\d{5} \d{5} \d{5} \d{5}$")

FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    """``data`` with the bits of ``mask`` flipped in byte ``index``."""
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def one(hs: Handshake) -> bytes:
    """The single message ``hs`` has to send now."""
    out = hs.take()
    assert len(out) == 1, out
    return out[0]


def assert_paired(dial: Handshake, accept: Handshake) -> None:
    """Both ends finished with keys that fit together."""
    assert dial.keys is not None
    assert accept.keys is not None
    assert dial.keys.send_key == accept.keys.recv_key
    assert dial.keys.recv_key == accept.keys.send_key
    assert dial.keys.send_key != dial.keys.recv_key
    assert all(len(k) == 32 for k in (dial.keys.send_key, dial.keys.recv_key))
    assert dial.keys.fingerprint == accept.keys.fingerprint
    assert FINGERPRINT.match(dial.keys.fingerprint)


# --- CodeHandshake -----------------------------------------------------------------


def code_pair(
    dial_code: str = CODE,
    accept_code: str = CODE,
    dial_context: bytes = CONTEXT,
    accept_context: bytes = CONTEXT,
) -> tuple[CodeHandshake, CodeHandshake]:
    return (
        CodeHandshake(dial_code, DIAL, dial_context),
        CodeHandshake(accept_code, ACCEPT, accept_context),
    )


def run_code(
    dial: CodeHandshake, accept: CodeHandshake, order: tuple[str, ...] = ("d", "a", "d", "a")
) -> dict[str, ProtocolError]:
    """Deliver each end's messages to the other, each direction in sequence
    as a relay does, until there is nothing left to deliver. ``order`` says
    which direction goes first at each step (``d``: dial to accept, ``a``:
    the other way) when both have something. Returns each end's error."""
    queues: dict[str, list[bytes]] = {"d": [], "a": []}
    ends = {"d": dial, "a": accept}
    peer_of = {"d": "a", "a": "d"}
    errors: dict[str, ProtocolError] = {}
    for step in itertools.chain(order, itertools.cycle("da")):
        queues["d"] += dial.take()
        queues["a"] += accept.take()
        ready = [s for s in (step, peer_of[step]) if queues[s] and peer_of[s] not in errors]
        if not ready:
            return errors
        sender = ready[0]
        try:
            ends[peer_of[sender]].receive(queues[sender].pop(0))
        except ProtocolError as exc:
            errors[peer_of[sender]] = exc
    raise AssertionError("unreachable")


# Every interleaving of two messages each way (each direction stays in order).
ORDERS = sorted(set(itertools.permutations("ddaa")))


@pytest.mark.parametrize("order", ORDERS, ids="".join)
def test_code_handshake_agrees_in_any_delivery_order(order: tuple[str, ...]) -> None:
    dial, accept = code_pair()
    assert run_code(dial, accept, order) == {}
    assert_paired(dial, accept)


def test_code_handshake_messages_have_the_documented_shape() -> None:
    dial, accept = code_pair()
    m1_dial, m1_accept = one(dial), one(accept)
    assert len(m1_dial) == len(m1_accept) == SPAKE2_BYTES + X25519_BYTES
    assert dial.take() == []  # nothing more until the peer's first message
    accept.receive(m1_dial)
    # The accepting end proves nothing yet: a confirmation from it would let
    # a claimant check a guess offline and hang up.
    assert accept.take() == []
    dial.receive(m1_accept)
    confirm_dial = one(dial)  # the claimant proves its code first
    assert len(confirm_dial) == MAC_BYTES
    assert dial.keys is None and accept.keys is None  # not before the proof
    accept.receive(confirm_dial)
    assert accept.keys is not None
    confirm_accept = one(accept)  # only now, after verifying
    assert len(confirm_accept) == MAC_BYTES
    assert confirm_accept != confirm_dial  # each end proves its own role
    dial.receive(confirm_accept)
    assert_paired(dial, accept)
    assert dial.take() == accept.take() == []


@pytest.mark.parametrize("order", ORDERS, ids="".join)
def test_the_accepting_end_confirms_only_after_verifying_the_claimant(
    order: tuple[str, ...],
) -> None:
    """Whatever the delivery order, nothing the accepting end sends before
    the claimant's confirmation verified depends on the code."""
    dial, accept = code_pair()
    sent_by_accept: list[bytes] = []
    queues: dict[str, list[bytes]] = {"d": [], "a": []}
    for step in itertools.chain(order, itertools.cycle("da")):
        queues["d"] += dial.take()
        out = accept.take()
        if accept.keys is None:
            assert [len(x) for x in out] in ([], [SPAKE2_BYTES + X25519_BYTES])
        sent_by_accept += out
        queues["a"] += out
        ready = [s for s in (step, "a" if step == "d" else "d") if queues[s]]
        if not ready:
            break
        sender = ready[0]
        (accept if sender == "d" else dial).receive(queues[sender].pop(0))
    assert_paired(dial, accept)
    assert len(sent_by_accept) == 2


def test_each_code_handshake_gives_fresh_keys() -> None:
    first, second = code_pair(), code_pair()
    run_code(*first)
    run_code(*second)
    assert first[0].keys is not None and second[0].keys is not None
    assert first[0].keys.send_key != second[0].keys.send_key
    assert first[0].keys.fingerprint != second[0].keys.fingerprint


@pytest.mark.parametrize("order", ORDERS, ids="".join)
def test_a_different_code_fails_at_the_accepting_end_which_reveals_nothing(
    order: tuple[str, ...],
) -> None:
    dial, accept = code_pair(dial_code="7-crossbow-gazelle", accept_code="7-crossbow-gazebo")
    errors = run_code(dial, accept, order)
    assert set(errors) == {"a"}
    assert type(errors["a"]) is WrongCode
    # The claimant got the accepting end's first message only: no
    # confirmation to check its guess against; its connection just ends.
    assert accept.take() == []
    assert dial.keys is None and accept.keys is None


@pytest.mark.parametrize(
    ("dial_context", "accept_context"),
    [(b"code:7", b"code:8"), (b"c-1\0ssh", b"c-2\0ssh"), (b"", b"code:7")],
)
def test_code_handshake_binds_its_context(dial_context: bytes, accept_context: bytes) -> None:
    dial, accept = code_pair(dial_context=dial_context, accept_context=accept_context)
    errors = run_code(dial, accept)
    assert set(errors) == {"a"}
    assert type(errors["a"]) is WrongCode
    assert dial.keys is None and accept.keys is None


def test_a_wrong_confirmation_from_the_accepting_end_is_a_wrong_code() -> None:
    """A malicious sender (or hub) that answers with a confirmation of its
    own guess: the claimant refuses it."""
    dial, accept = code_pair(accept_code="7-crossbow-gazebo")
    dial.receive(one(accept))
    with pytest.raises(WrongCode):
        dial.receive(bytes(MAC_BYTES))
    assert dial.keys is None


def test_after_a_wrong_code_the_accepting_end_stays_failed() -> None:
    dial, accept = code_pair(accept_code="7-crossbow-gazebo")
    accept.receive(one(dial))
    dial.receive(one(accept))
    confirmation = one(dial)
    with pytest.raises(WrongCode):
        accept.receive(confirmation)
    for again in (confirmation, bytes(MAC_BYTES)):
        with pytest.raises(ProtocolError):
            accept.receive(again)
    assert accept.take() == [] and accept.keys is None


@pytest.mark.parametrize("index", [0, 5, MAC_BYTES - 1])
def test_tampered_confirmation_is_a_wrong_code(index: int) -> None:
    dial, accept = code_pair()
    m1_dial, m1_accept = one(dial), one(accept)
    accept.receive(m1_dial)
    dial.receive(m1_accept)
    confirm_dial = one(dial)
    with pytest.raises(WrongCode):
        accept.receive(flip(confirm_dial, index))
    assert accept.keys is None
    assert accept.take() == []  # and it says nothing more


def test_wrong_confirmation_of_the_right_length_is_a_wrong_code() -> None:
    dial, accept = code_pair()
    accept.receive(one(dial))
    with pytest.raises(WrongCode):
        accept.receive(bytes(MAC_BYTES))
    assert accept.keys is None


@pytest.mark.parametrize(
    "confirmation", [b"", bytes(MAC_BYTES - 1), bytes(MAC_BYTES + 1), bytes(SPAKE2_BYTES + 32)]
)
def test_junk_confirmation_is_refused(confirmation: bytes) -> None:
    dial, accept = code_pair()
    accept.receive(one(dial))
    with pytest.raises(ProtocolError):
        accept.receive(confirmation)
    assert accept.keys is None


@pytest.mark.parametrize("repeat", [False, True], ids=["short", "repeated-message-1"])
def test_malformed_confirmation_is_a_protocol_error_not_a_wrong_code(repeat: bool) -> None:
    dial, accept = code_pair()
    message_1 = one(dial)
    accept.receive(message_1)
    with pytest.raises(RemoteProtocolError):
        accept.receive(message_1 if repeat else bytes(MAC_BYTES - 1))


def test_reflected_confirmation_is_refused() -> None:
    dial, accept = code_pair()
    m1_dial, m1_accept = one(dial), one(accept)
    accept.receive(m1_dial)
    dial.receive(m1_accept)
    confirm_dial = one(dial)
    with pytest.raises(WrongCode):
        dial.receive(confirm_dial)  # its own proof, bounced back by the relay
    assert dial.keys is None
    accept.receive(confirm_dial)
    confirm_accept = one(accept)
    assert confirm_accept != confirm_dial


@pytest.mark.parametrize("length", [0, 1, 32, SPAKE2_BYTES, 64, 66, 200])
def test_code_message_of_wrong_length_is_a_protocol_error(length: int) -> None:
    _, accept = code_pair()
    with pytest.raises(RemoteProtocolError):
        accept.receive(b"B" + bytes(max(length - 1, 0)) if length else b"")
    assert accept.keys is None


def spake_elements() -> list[bytes]:
    identity = (1).to_bytes(32, "little")  # the neutral element
    small_order = bytes(32)  # y = 0: a point of order 4
    not_canonical = b"\xff" * 32
    return [identity, small_order, not_canonical, b"\x02" + bytes(31)]


@pytest.mark.parametrize("element", spake_elements(), ids=["neutral", "order4", "ff", "y2"])
def test_garbage_spake2_element_is_a_protocol_error(element: bytes) -> None:
    dial, accept = code_pair()
    x25519 = one(dial)[SPAKE2_BYTES:]
    with pytest.raises(RemoteProtocolError):
        accept.receive(b"B" + element + x25519)
    assert accept.keys is None


def test_spake2_message_from_the_same_side_is_a_protocol_error() -> None:
    accept, other_accept = (
        CodeHandshake(CODE, ACCEPT, CONTEXT),
        CodeHandshake(CODE, ACCEPT, CONTEXT),
    )
    with pytest.raises(RemoteProtocolError):
        accept.receive(one(other_accept))
    dial = CodeHandshake(CODE, DIAL, CONTEXT)
    with pytest.raises(RemoteProtocolError):
        dial.receive(one(dial))  # its own message reflected


def test_low_order_x25519_key_in_code_handshake_is_a_protocol_error() -> None:
    dial, accept = code_pair()
    message = one(dial)
    with pytest.raises(RemoteProtocolError):
        accept.receive(message[:SPAKE2_BYTES] + bytes(X25519_BYTES))
    assert accept.keys is None


def test_code_handshake_refuses_messages_after_it_finished() -> None:
    dial, accept = code_pair()
    run_code(dial, accept)
    assert dial.keys is not None
    for junk in (b"", bytes(MAC_BYTES), bytes(SPAKE2_BYTES + X25519_BYTES)):
        with pytest.raises(RemoteProtocolError):
            dial.receive(junk)
    assert_paired(dial, accept)  # the keys stay as they were


def test_bad_role_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        CodeHandshake(CODE, "listen", CONTEXT)
    with pytest.raises(LocalProtocolError):
        IdentityHandshake(Ed25519PrivateKey.generate(), "send", CONTEXT, [])


# --- IdentityHandshake -------------------------------------------------------------

ALICE = Ed25519PrivateKey.generate()  # dials
BOB = Ed25519PrivateKey.generate()  # accepts
MALLORY = Ed25519PrivateKey.generate()
ID_CONTEXT = b"c-0123\0ssh"


def id_pair(
    dial_trusts: list[bytes] | None = None,
    accept_trusts: list[bytes] | None = None,
    dial_context: bytes = ID_CONTEXT,
    accept_context: bytes = ID_CONTEXT,
) -> tuple[IdentityHandshake, IdentityHandshake]:
    dial_trusts = [public_of(BOB)] if dial_trusts is None else dial_trusts
    accept_trusts = [public_of(ALICE)] if accept_trusts is None else accept_trusts
    return (
        IdentityHandshake(ALICE, DIAL, dial_context, dial_trusts),
        IdentityHandshake(BOB, ACCEPT, accept_context, accept_trusts),
    )


def test_identity_handshake_agrees_in_three_messages() -> None:
    dial, accept = id_pair()
    assert accept.take() == []  # the accepting end waits for message 1
    m1 = one(dial)
    assert len(m1) == X25519_BYTES + 32
    assert m1[X25519_BYTES:] == public_of(ALICE)
    accept.receive(m1)
    assert accept.keys is None
    m2 = one(accept)
    assert len(m2) == X25519_BYTES + 32 + SIGNATURE_BYTES
    assert m2[X25519_BYTES : X25519_BYTES + 32] == public_of(BOB)
    dial.receive(m2)
    assert dial.keys is not None
    m3 = one(dial)
    assert len(m3) == SIGNATURE_BYTES
    accept.receive(m3)
    assert_paired(dial, accept)
    assert dial.take() == accept.take() == []


def run_identity(dial: IdentityHandshake, accept: IdentityHandshake) -> None:
    accept.receive(one(dial))
    dial.receive(one(accept))
    accept.receive(one(dial))


def test_identity_handshake_accepts_any_of_the_listed_keys() -> None:
    _, spare = new_identity()
    dial, accept = id_pair(
        dial_trusts=[spare, public_of(BOB)], accept_trusts=[public_of(ALICE), spare]
    )
    run_identity(dial, accept)
    assert_paired(dial, accept)


def test_identity_keys_load_back() -> None:
    private, public = new_identity()
    key = load_identity(private)
    assert public_of(key) == public
    assert len(private) == len(public) == 32
    dial = IdentityHandshake(key, DIAL, ID_CONTEXT, [public_of(BOB)])
    accept = IdentityHandshake(BOB, ACCEPT, ID_CONTEXT, [public])
    run_identity(dial, accept)
    assert_paired(dial, accept)


def test_each_identity_handshake_gives_fresh_keys() -> None:
    first, second = id_pair(), id_pair()
    run_identity(*first)
    run_identity(*second)
    assert first[0].keys is not None and second[0].keys is not None
    assert first[0].keys.send_key != second[0].keys.send_key


def test_accepting_end_rejects_an_unlisted_dialer() -> None:
    dial, accept = id_pair(accept_trusts=[public_of(MALLORY)])
    with pytest.raises(PeerKeyRejected):
        accept.receive(one(dial))
    assert accept.take() == []  # it says nothing, not even its signature
    assert accept.keys is None


def test_dialing_end_rejects_an_unlisted_acceptor() -> None:
    dial, accept = id_pair(dial_trusts=[public_of(MALLORY)])
    accept.receive(one(dial))
    with pytest.raises(PeerKeyRejected):
        dial.receive(one(accept))
    assert dial.take() == []
    assert dial.keys is None


def test_no_listed_keys_means_nobody_gets_in() -> None:
    dial, accept = id_pair(accept_trusts=[])
    with pytest.raises(PeerKeyRejected):
        accept.receive(one(dial))


@pytest.mark.parametrize("index", [0, 31, SIGNATURE_BYTES - 1])
def test_forged_signature_in_message_2_is_rejected(index: int) -> None:
    dial, accept = id_pair()
    accept.receive(one(dial))
    m2 = one(accept)
    with pytest.raises(PeerKeyRejected):
        dial.receive(flip(m2, X25519_BYTES + 32 + index))
    assert dial.keys is None
    assert dial.take() == []


@pytest.mark.parametrize("index", [0, 31, SIGNATURE_BYTES - 1])
def test_forged_signature_in_message_3_is_rejected(index: int) -> None:
    dial, accept = id_pair()
    accept.receive(one(dial))
    dial.receive(one(accept))
    with pytest.raises(PeerKeyRejected):
        accept.receive(flip(one(dial), index))
    assert accept.keys is None


def test_signature_must_come_from_the_claimed_key() -> None:
    """Mallory's key is listed too, but she signs while claiming to be Alice."""
    dial, accept = id_pair(accept_trusts=[public_of(ALICE), public_of(MALLORY)])
    accept.receive(one(dial))
    dial.receive(one(accept))
    genuine = one(dial)
    # The exact bytes Alice signed (white-box: the transcript hash), signed by Mallory.
    signed = b"dial" + hashlib.sha256(accept._transcript).digest()
    assert ALICE.sign(signed) == genuine  # Ed25519 is deterministic: same construction
    with pytest.raises(PeerKeyRejected):
        accept.receive(MALLORY.sign(signed))
    assert accept.keys is None


def test_swapping_the_identity_key_in_message_1_is_rejected() -> None:
    """Mallory swaps in another key listed for Alice's account; Bob then signs
    a transcript Alice never saw."""
    _, other_alice_key = new_identity()
    dial, accept = id_pair(accept_trusts=[public_of(ALICE), other_alice_key])
    m1 = one(dial)
    accept.receive(m1[:X25519_BYTES] + other_alice_key)
    with pytest.raises(PeerKeyRejected):
        dial.receive(one(accept))
    assert dial.keys is None


def test_mitm_substituting_its_x25519_key_is_caught() -> None:
    """Mallory relays everything but puts her own ephemeral keys in messages
    1 and 2, hoping to share a secret with each end."""
    dial, accept = id_pair()
    mallory_eph = IdentityHandshake(MALLORY, DIAL, ID_CONTEXT, []).take()[0][:X25519_BYTES]
    m1 = one(dial)
    accept.receive(mallory_eph + m1[X25519_BYTES:])
    m2 = one(accept)
    with pytest.raises(PeerKeyRejected):
        dial.receive(mallory_eph + m2[X25519_BYTES:])
    assert dial.keys is None


def test_mitm_substituting_only_the_first_key_is_caught_by_the_dialer() -> None:
    dial, accept = id_pair()
    mallory_eph = IdentityHandshake(MALLORY, DIAL, ID_CONTEXT, []).take()[0][:X25519_BYTES]
    m1 = one(dial)
    accept.receive(mallory_eph + m1[X25519_BYTES:])
    with pytest.raises(PeerKeyRejected):
        dial.receive(one(accept))
    assert dial.keys is None


def test_mitm_substituting_only_the_second_key_is_caught_by_the_dialer() -> None:
    dial, accept = id_pair()
    mallory_eph = IdentityHandshake(MALLORY, DIAL, ID_CONTEXT, []).take()[0][:X25519_BYTES]
    accept.receive(one(dial))
    m2 = one(accept)
    with pytest.raises(PeerKeyRejected):
        dial.receive(mallory_eph + m2[X25519_BYTES:])
    assert dial.keys is None


def test_mitm_with_its_own_identity_is_rejected() -> None:
    """Mallory runs the handshake honestly with each end under her own key."""
    dial, accept = id_pair()
    as_acceptor = IdentityHandshake(MALLORY, ACCEPT, ID_CONTEXT, [public_of(ALICE)])
    as_acceptor.receive(one(dial))
    with pytest.raises(PeerKeyRejected):
        dial.receive(one(as_acceptor))
    as_dialer = IdentityHandshake(MALLORY, DIAL, ID_CONTEXT, [public_of(BOB)])
    with pytest.raises(PeerKeyRejected):
        accept.receive(one(as_dialer))


def test_messages_from_another_connection_are_rejected() -> None:
    """Bob's signed message 2 for connection A does not work on connection B."""
    dial, accept = id_pair(dial_context=b"c-2\0ssh", accept_context=b"c-1\0ssh")
    accept.receive(one(dial))
    with pytest.raises(PeerKeyRejected):
        dial.receive(one(accept))


BOUND = {
    "cid": "c-0123",
    "app": "ssh",
    "dial_account": "alice",
    "accept_account": "bob",
    "hub_fingerprint": "SHA256:" + "ab" * 32,
}


@pytest.mark.parametrize(
    ("field", "theirs"),
    [
        ("dial_account", "mallory"),
        ("accept_account", "bobby"),
        ("hub_fingerprint", "SHA256:" + "cd" * 32),
        ("app", "ssh2"),
    ],
)
def test_identity_transcript_binds_both_accounts_and_the_hub(field: str, theirs: str) -> None:
    """Both ends sign what each believes: who dials, who accepts, through
    which hub. A hub that tells the ends different stories (or two hubs
    splicing one connection) makes the signatures fail."""
    mine = identity_context(**BOUND)
    other = identity_context(**{**BOUND, field: theirs})
    assert mine != other
    dial, accept = id_pair(dial_context=mine, accept_context=other)
    accept.receive(one(dial))
    with pytest.raises(PeerKeyRejected):
        dial.receive(one(accept))
    assert dial.keys is None
    same_dial, same_accept = id_pair(dial_context=mine, accept_context=identity_context(**BOUND))
    run_identity(same_dial, same_accept)
    assert_paired(same_dial, same_accept)


def test_identity_context_fields_cannot_run_into_each_other() -> None:
    a = identity_context(**{**BOUND, "dial_account": "ab", "accept_account": "c"})
    b = identity_context(**{**BOUND, "dial_account": "a", "accept_account": "bc"})
    assert a != b


def test_the_peer_identity_is_known_once_its_message_arrives() -> None:
    dial, accept = id_pair()
    assert dial.peer_identity == accept.peer_identity == b""
    accept.receive(one(dial))
    assert accept.peer_identity == public_of(ALICE)
    dial.receive(one(accept))
    assert dial.peer_identity == public_of(BOB)


def test_low_order_x25519_key_in_identity_handshake_is_a_protocol_error() -> None:
    _, accept = id_pair()
    with pytest.raises(RemoteProtocolError):
        accept.receive(bytes(X25519_BYTES) + public_of(ALICE))
    assert accept.take() == []


@pytest.mark.parametrize("role", [DIAL, ACCEPT])
def test_identity_handshake_refuses_messages_after_it_finished(role: str) -> None:
    dial, accept = id_pair()
    run_identity(dial, accept)
    end = dial if role == DIAL else accept
    for junk in (b"", bytes(SIGNATURE_BYTES), bytes(X25519_BYTES + 32)):
        with pytest.raises(RemoteProtocolError):
            end.receive(junk)
    assert_paired(dial, accept)


@pytest.mark.parametrize("delta", [-1, 1, -SIGNATURE_BYTES])
@pytest.mark.parametrize("step", [1, 2, 3])
def test_identity_message_of_wrong_length_is_a_protocol_error(step: int, delta: int) -> None:
    dial, accept = id_pair()
    messages = [one(dial)]
    if step >= 2:
        accept.receive(messages[0])
        messages.append(one(accept))
    if step == 3:
        dial.receive(messages[1])
        messages.append(one(dial))
    receiver = accept if step in (1, 3) else dial
    message = messages[-1]
    wrong = message[:delta] if delta < 0 else message + b"\x00" * delta
    with pytest.raises(RemoteProtocolError):
        receiver.receive(wrong)
    assert receiver.keys is None


# --- SecureSession -----------------------------------------------------------------

SECRET = bytes(range(32))


def session_pair(
    window: int = 1 << 20, secret: bytes = SECRET
) -> tuple[SecureSession, SecureSession]:
    """The dialing and accepting ends of one connection."""
    return (
        SecureSession(SessionKeys.derive(secret, b"transcript", DIAL), window),
        SecureSession(SessionKeys.derive(secret, b"transcript", ACCEPT), window),
    )


def test_keys_from_a_real_handshake_carry_records_both_ways() -> None:
    dial_hs, accept_hs = code_pair()
    run_code(dial_hs, accept_hs)
    assert dial_hs.keys is not None and accept_hs.keys is not None
    dial, accept = SecureSession(dial_hs.keys), SecureSession(accept_hs.keys)
    assert accept.open(*dial.seal(b"ping")) == b"ping"
    assert dial.open(*accept.seal(b"pong")) == b"pong"
    assert dial.on_ack(*accept.ack()) == 1
    assert accept.on_ack(*dial.ack()) == 1


def test_records_arrive_in_order() -> None:
    tx, rx = session_pair()
    sent = [b"record %d" % i for i in range(20)] + [b"", b"x" * 70000]
    records = [tx.seal(p) for p in sent]
    assert [seq for seq, _ in records] == list(range(len(sent)))
    assert all(len(sealed) == len(p) + 16 for (_, sealed), p in zip(records, sent, strict=True))
    assert all(p not in sealed for (_, sealed), p in zip(records, sent, strict=True) if p)
    assert [rx.open(seq, sealed) for seq, sealed in records] == sent
    assert rx.expected == len(sent)
    assert rx.delivered_since_ack == len(sent)


def test_same_plaintext_seals_differently_per_record() -> None:
    tx, _ = session_pair()
    assert tx.seal(b"same")[1] != tx.seal(b"same")[1]


def test_the_two_directions_use_different_keys() -> None:
    dial, accept = session_pair()
    seq, sealed = dial.seal(b"hello")
    with pytest.raises(IntegrityError):
        dial.open(seq, sealed)  # reflected back to its sender
    assert accept.open(seq, sealed) == b"hello"


def test_replayed_record_is_dropped_and_does_not_advance() -> None:
    tx, rx = session_pair()
    first, second = tx.seal(b"one"), tx.seal(b"two")
    assert rx.open(*first) == b"one"
    assert rx.open(*first) is None
    assert rx.expected == 1
    assert rx.open(*second) == b"two"
    assert rx.open(*first) is None
    assert rx.open(*second) is None
    assert rx.expected == 2


def test_record_beyond_a_gap_waits_for_the_retransmission() -> None:
    tx, rx = session_pair()
    records = [tx.seal(b"r%d" % i) for i in range(4)]
    assert rx.open(*records[0]) == b"r0"
    assert rx.open(*records[2]) is None  # records[1] was lost
    assert rx.open(*records[3]) is None
    assert rx.expected == 1
    # After a reconnect the sender sends everything not yet acknowledged.
    assert tx.unacked() == records
    assert [rx.open(seq, sealed) for seq, sealed in tx.unacked()] == [None, b"r1", b"r2", b"r3"]
    assert tx.on_ack(*rx.ack()) == 4
    assert tx.unacked() == []
    assert tx.in_flight == 0


@pytest.mark.parametrize("index", [0, 3, -1])
def test_tampered_record_is_an_integrity_error(index: int) -> None:
    tx, rx = session_pair()
    seq, sealed = tx.seal(b"attack at dawn")
    with pytest.raises(IntegrityError):
        rx.open(seq, flip(sealed, index))
    assert rx.expected == 0
    assert rx.open(seq, sealed) == b"attack at dawn"


@pytest.mark.parametrize("sealed", [b"", b"\x00" * 15, b"\x00" * 16, b"\x00" * 100])
def test_record_too_short_or_unauthentic_is_an_integrity_error(sealed: bytes) -> None:
    _, rx = session_pair()
    with pytest.raises(IntegrityError):
        rx.open(0, sealed)


def test_truncated_or_extended_record_is_an_integrity_error() -> None:
    tx, rx = session_pair()
    seq, sealed = tx.seal(b"some bytes")
    for wrong in (sealed[:-1], sealed + b"\x00", sealed[1:]):
        with pytest.raises(IntegrityError):
            rx.open(seq, wrong)


def test_record_moved_to_another_sequence_is_an_integrity_error() -> None:
    tx, rx = session_pair()
    _, first = tx.seal(b"first")
    _, second = tx.seal(b"second")
    with pytest.raises(IntegrityError):
        rx.open(0, second)  # the relay swaps two records' labels
    assert rx.open(0, first) == b"first"


def test_record_sealed_with_another_key_is_an_integrity_error() -> None:
    stranger, _ = session_pair(secret=bytes(32))
    _, rx = session_pair()
    with pytest.raises(IntegrityError):
        rx.open(*stranger.seal(b"hi"))


def test_acknowledgement_cannot_pass_as_a_record() -> None:
    dial, accept = session_pair()
    accept.open(*dial.seal(b"x"))
    counter, sealed = accept.ack()
    with pytest.raises(IntegrityError):
        dial.open(counter, sealed)  # same key and number, other kind
    record = accept.seal(b"\x00" * 8)
    with pytest.raises(IntegrityError):
        dial.on_ack(*record)


def test_ack_frees_exactly_the_records_below_it() -> None:
    tx, rx = session_pair()
    sizes = [10, 20, 30, 40, 50]
    records = [tx.seal(bytes(n)) for n in sizes]
    assert tx.in_flight == sum(sizes)
    for record in records[:3]:
        rx.open(*record)
    assert rx.delivered_since_ack == 3
    counter, sealed = rx.ack()
    assert rx.delivered_since_ack == 0
    assert tx.on_ack(counter, sealed) == 3
    assert tx.unacked() == records[3:]
    assert tx.in_flight == 40 + 50
    assert tx.acked_upto == 3
    # Nothing new delivered: a fresh ack frees nothing more.
    assert tx.on_ack(*rx.ack()) == 0
    for record in records[3:]:
        rx.open(*record)
    assert tx.on_ack(*rx.ack()) == 2
    assert tx.unacked() == []
    assert tx.in_flight == 0
    assert tx.acked_upto == 5


def test_ack_with_nothing_received_frees_nothing() -> None:
    tx, rx = session_pair()
    tx.seal(b"a")
    assert tx.on_ack(*rx.ack()) == 0
    assert len(tx.unacked()) == 1


def test_replayed_or_reordered_ack_is_ignored() -> None:
    tx, rx = session_pair()
    records = [tx.seal(b"%d" % i) for i in range(5)]
    for record in records[:2]:
        rx.open(*record)
    old = rx.ack()
    for record in records[2:4]:
        rx.open(*record)
    new = rx.ack()
    assert old[0] < new[0]
    assert tx.on_ack(*new) == 4
    assert tx.on_ack(*old) == 0  # arrived late
    assert tx.on_ack(*new) == 0  # arrived twice
    assert tx.unacked() == records[4:]
    assert tx.acked_upto == 4
    rx.open(*records[4])
    assert tx.on_ack(*rx.ack()) == 1
    assert tx.on_ack(*old) == 0
    assert tx.unacked() == []


def test_a_late_ack_with_a_newer_counter_does_not_undo_progress() -> None:
    """Acks carry the cumulative count, so a later one never frees less."""
    tx, rx = session_pair()
    records = [tx.seal(b"%d" % i) for i in range(3)]
    for record in records:
        rx.open(*record)
    assert tx.on_ack(*rx.ack()) == 3
    assert tx.on_ack(*rx.ack()) == 0
    assert tx.acked_upto == 3


@pytest.mark.parametrize("index", [0, 7, -1])
def test_tampered_ack_is_an_integrity_error(index: int) -> None:
    tx, rx = session_pair()
    rx.open(*tx.seal(b"a"))
    counter, sealed = rx.ack()
    with pytest.raises(IntegrityError):
        tx.on_ack(counter, flip(sealed, index))
    with pytest.raises(IntegrityError):
        tx.on_ack(counter + 1, sealed)  # relabelled
    assert tx.on_ack(counter, sealed) == 1  # the genuine one still works


def test_ack_sealed_with_another_key_is_an_integrity_error() -> None:
    tx, _ = session_pair()
    _, stranger = session_pair(secret=bytes(32))
    tx.seal(b"a")
    with pytest.raises(IntegrityError):
        tx.on_ack(*stranger.ack())


def test_ack_of_records_never_sent_is_a_protocol_error() -> None:
    tx, rx = session_pair()
    twin, _ = session_pair()  # same keys: an honest-looking end that sealed more
    tx.seal(b"only one")
    for _ in range(3):
        rx.open(*twin.seal(b"x"))
    with pytest.raises(RemoteProtocolError):
        tx.on_ack(*rx.ack())
    assert len(tx.unacked()) == 1


@pytest.mark.parametrize("counter", [2**64, 2**70])
def test_ack_counter_out_of_nonce_range_is_a_protocol_error(counter: int) -> None:
    tx, _ = session_pair()
    with pytest.raises(ProtocolError):
        tx.on_ack(counter, bytes(24))


@pytest.mark.parametrize("plain", [b"", b"\x00" * 4, b"\x00" * 8, b"\x00" * 10])
def test_authentic_ack_of_wrong_length_is_a_protocol_error(plain: bytes) -> None:
    tx, rx = session_pair()
    # What a buggy or hostile peer holding the keys could send.
    sealed = AESGCM(rx.keys.send_key).encrypt(struct.pack(">B3xQ", KIND_ACK, 0), plain, None)
    with pytest.raises(RemoteProtocolError):
        tx.on_ack(0, sealed)


def test_an_ack_after_a_gap_asks_for_a_resend() -> None:
    tx, rx = session_pair()
    records = [tx.seal(bytes([i])) for i in range(3)]
    assert rx.open(*records[0]) == b"\x00"
    assert rx.open(*records[2]) is None  # record 1 was lost on the way
    tx.on_ack(*rx.ack(gap=True))
    assert tx.gap_reported
    assert [seq for seq, _ in tx.unacked()] == [1, 2]  # what to send again
    for seq, sealed in tx.unacked():
        rx.open(seq, sealed)
    tx.on_ack(*rx.ack())
    assert not tx.gap_reported
    assert tx.unacked() == []


def test_can_send_respects_the_window() -> None:
    tx, rx = session_pair(window=100)
    assert tx.can_send(10**9)  # nothing in flight: one record always goes
    tx.seal(bytes(60))
    assert tx.can_send(40)
    assert not tx.can_send(41)
    tx.seal(bytes(40))
    assert tx.in_flight == 100
    assert not tx.can_send(1)
    assert tx.can_send(0)
    for seq, sealed in tx.unacked()[:1]:
        rx.open(seq, sealed)
    assert tx.on_ack(*rx.ack()) == 1
    assert tx.in_flight == 40
    assert tx.can_send(60)
    assert not tx.can_send(61)
    for seq, sealed in tx.unacked():
        rx.open(seq, sealed)
    tx.on_ack(*rx.ack())
    assert tx.in_flight == 0
    assert tx.can_send(10**9)


def test_one_oversized_record_goes_and_then_blocks() -> None:
    tx, _ = session_pair(window=10)
    assert tx.can_send(500)
    tx.seal(bytes(500))
    assert not tx.can_send(1)


def test_window_change_applies_at_once() -> None:
    tx, _ = session_pair(window=100)
    tx.seal(bytes(80))
    assert not tx.can_send(30)
    tx.window = 200  # the hub announced a larger buffer on relink
    assert tx.can_send(30)


def test_a_receiver_refuses_records_beyond_the_window_it_granted() -> None:
    """A sender that ignores the window (can_send) is cut off by the
    receiver: what it holds unacknowledged never exceeds the window."""
    tx, rx = session_pair(window=100)
    held = 0
    with pytest.raises(FlowViolation):
        for _ in range(10):
            plain = rx.open(*tx.seal(bytes(30)))  # no can_send: a hostile sender
            assert plain is not None
            held += len(plain)
    assert held == 90  # three records of 30 fit in 100, the fourth does not
    assert rx.expected == 3


def test_the_window_counts_from_the_last_acknowledgement() -> None:
    tx, rx = session_pair(window=100)
    for _ in range(3):
        rx.open(*tx.seal(bytes(30)))
    tx.on_ack(*rx.ack())  # the application took them: 100 bytes of credit again
    for _ in range(3):
        assert rx.open(*tx.seal(bytes(30))) is not None
    with pytest.raises(FlowViolation):
        rx.open(*tx.seal(bytes(30)))


def test_one_record_larger_than_the_window_is_allowed_alone() -> None:
    """As can_send allows: with nothing in flight, one record always goes."""
    tx, rx = session_pair(window=10)
    assert rx.open(*tx.seal(bytes(500))) is not None
    with pytest.raises(FlowViolation):
        rx.open(*tx.seal(b"x"))
    tx2, rx2 = session_pair(window=10)
    rx2.open(*tx2.seal(bytes(500)))
    tx2.on_ack(*rx2.ack())
    assert rx2.open(*tx2.seal(bytes(500))) is not None


def test_held_records_keep_their_credit_until_the_application_takes_them() -> None:
    """Records opened with ``hold`` stay the receiver's until released:
    an acknowledgement gives credit only for what the application took, so
    acknowledgements a peer provokes (replays) grant it nothing more."""
    tx, rx = session_pair(window=100)
    first = tx.seal(bytes(30))
    for seq, sealed in (first, tx.seal(bytes(30)), tx.seal(bytes(30))):
        assert rx.open(seq, sealed, hold=True) is not None
    assert rx.held_bytes == 90
    assert rx.open(*first) is None  # a replay...
    assert tx.on_ack(*rx.ack()) == 0  # ...answered, but nothing was taken
    with pytest.raises(FlowViolation):
        rx.open(*tx.seal(bytes(30)), hold=True)
    rx.release()  # the application took one record
    assert tx.on_ack(*rx.ack()) == 1
    assert rx.held_bytes == 60
    tx2, rx2 = session_pair(window=100)
    for _ in range(3):
        rx2.open(*tx2.seal(bytes(30)), hold=True)
    rx2.release()
    rx2.ack()
    assert rx2.open(*tx2.seal(bytes(30)), hold=True) is not None  # 90 held again
    with pytest.raises(FlowViolation):
        rx2.open(*tx2.seal(bytes(11)), hold=True)


def test_replays_and_records_past_a_gap_do_not_count_against_the_window() -> None:
    tx, rx = session_pair(window=100)
    records = [tx.seal(bytes(40)) for _ in range(2)]
    for _ in range(5):
        assert rx.open(*records[1]) is None  # beyond a gap: dropped, not held
    rx.open(*records[0])
    for _ in range(5):
        assert rx.open(*records[0]) is None  # a replay
    assert rx.open(*records[1]) is not None


# --- a lossy relay ----------------------------------------------------------------


class End:
    """One end of a connection: its session, what it sent and what it got."""

    def __init__(self, session: SecureSession, to_send: list[bytes]) -> None:
        self.session = session
        self.to_send = list(to_send)
        self.sent: list[bytes] = []
        self.got: list[bytes] = []  # what the application took
        self.held: list[bytes] = []  # opened, not yet taken by the application
        self.outbox: list[tuple[str, int, bytes]] = []  # what the relay holds for the peer

    def send_next(self) -> None:
        if self.to_send and self.session.can_send(len(self.to_send[0])):
            plain = self.to_send.pop(0)
            seq, sealed = self.session.seal(plain)
            self.sent.append(plain)
            self.outbox.append(("d", seq, sealed))

    def send_ack(self) -> None:
        self.outbox.append(("a", *self.session.ack()))

    def receive(self, kind: str, seq: int, sealed: bytes) -> None:
        if kind == "a":
            if self.session.on_ack(seq, sealed) == 0:
                event("ack freed nothing")
            return
        expected = self.session.expected
        plain = self.session.open(seq, sealed, hold=True)  # FlowViolation fails the test
        if plain is not None:
            self.held.append(plain)
        elif seq < expected:
            event("replayed record dropped")
            self.send_ack()  # a resend: say again what we have, as the client does
        else:
            event("record beyond a gap dropped")

    def take(self) -> None:
        """The application takes the oldest record it has not taken yet."""
        if self.held:
            self.got.append(self.held.pop(0))
            self.session.release()

    def reconnect(self) -> None:
        """What an end does after the relay lost everything in flight."""
        for seq, sealed in self.session.unacked():
            self.outbox.append(("d", seq, sealed))
        self.send_ack()


ACTIONS = [
    *("send", "send", "send", "deliver", "deliver", "deliver", "drop", "dup", "ack", "swap"),
    *("take", "take"),
]
payloads = st.lists(st.binary(max_size=40), min_size=1, max_size=25)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    dial_data=payloads,
    accept_data=payloads,
    window=st.integers(1, 200),
    data=st.data(),
)
def test_lossy_relay_delivers_everything_exactly_once_in_order(
    dial_data: list[bytes], accept_data: list[bytes], window: int, data: st.DataObject
) -> None:
    dial_session, accept_session = session_pair(window=window)
    ends = [End(dial_session, dial_data), End(accept_session, accept_data)]
    steps = data.draw(
        st.lists(
            st.tuples(
                st.integers(0, 1), st.sampled_from([*ACTIONS, "reconnect"]), st.integers(0, 10**6)
            ),
            min_size=10,
            max_size=150,
        ),
        label="schedule",
    )
    for who, action, pick in steps:
        me, peer = ends[who], ends[1 - who]
        box = me.outbox
        if action == "send":
            me.send_next()
        elif action == "take":
            me.take()
        elif action == "ack":
            me.send_ack()
        elif action == "reconnect":
            for end in ends:
                end.outbox.clear()
            for end in ends:
                end.reconnect()
        elif box:
            i = pick % len(box)
            if action == "deliver":
                peer.receive(*box.pop(i))
            elif action == "drop":
                box.pop(i)
            elif action == "dup":
                box.insert(pick % (len(box) + 1), box[i])
            elif action == "swap":
                j = (pick // len(box)) % len(box)
                box[i], box[j] = box[j], box[i]
        for end, other in ((ends[0], ends[1]), (ends[1], ends[0])):
            got = other.got + other.held
            assert got == end.sent[: len(got)]  # a prefix, in order
            assert end.session.in_flight == sum(len(p) for p in end.sent[end.session.acked_upto :])
            # What the receiver holds for the application is within its window.
            assert sum(map(len, other.held)) <= max(window, max(map(len, other.held), default=0))
    # Then the relay behaves: reconnect, and deliver in order until quiet.
    for end in ends:
        end.outbox.clear()
    for end in ends:
        end.reconnect()
    for _ in range(10 * (len(dial_data) + len(accept_data)) + 20):
        moved = False
        for me, peer in ((ends[0], ends[1]), (ends[1], ends[0])):
            me.send_next()
            while me.outbox:
                peer.receive(*me.outbox.pop(0))
                moved = True
            taken = bool(peer.held)
            while peer.held:
                peer.take()
            if peer.session.delivered_since_ack or taken:
                peer.send_ack()
                moved = True
        if not moved and not any(end.to_send for end in ends):
            break
    for end, other in ((ends[0], ends[1]), (ends[1], ends[0])):
        assert other.got == end.sent
        assert end.to_send == []
        assert end.session.unacked() == []
        assert end.session.in_flight == 0
    assert ends[1].got == dial_data
    assert ends[0].got == accept_data


# --- fuzzing ----------------------------------------------------------------------------

junk = st.one_of(
    st.binary(max_size=200),
    st.binary(min_size=SPAKE2_BYTES + X25519_BYTES, max_size=SPAKE2_BYTES + X25519_BYTES),
    st.binary(min_size=MAC_BYTES, max_size=MAC_BYTES),
    st.binary(min_size=X25519_BYTES + 32, max_size=X25519_BYTES + 32),
    st.binary(min_size=SIGNATURE_BYTES, max_size=SIGNATURE_BYTES),
    st.binary(min_size=128, max_size=128),
)


@FAST
@given(
    role=st.sampled_from([DIAL, ACCEPT]),
    honest_first=st.booleans(),
    side_byte=st.sampled_from([b"", b"A", b"B"]),
    messages=st.lists(junk, min_size=1, max_size=3),
)
def test_code_handshake_only_raises_protocol_errors(
    role: str, honest_first: bool, side_byte: bytes, messages: list[bytes]
) -> None:
    hs = CodeHandshake(CODE, role, CONTEXT)
    if honest_first:
        peer = CodeHandshake(CODE, ACCEPT if role == DIAL else DIAL, CONTEXT)
        hs.receive(one(peer))
    elif side_byte and len(messages[0]) == SPAKE2_BYTES + X25519_BYTES:
        messages[0] = side_byte + messages[0][1:]  # reach the SPAKE2 element decoding
    for message in messages:
        try:
            hs.receive(message)
        except ProtocolError:
            break
    assert hs.keys is None  # no junk ever completes the handshake


@FAST
@given(
    honest_first=st.booleans(),
    right_code=st.booleans(),
    messages=st.lists(junk, max_size=4),
)
def test_the_accepting_end_never_confirms_an_unverified_claim(
    honest_first: bool, right_code: bool, messages: list[bytes]
) -> None:
    """Fed anything but the claimant's valid confirmation, the accepting end
    sends its first message and nothing else, errors or not."""
    accept = CodeHandshake(CODE, ACCEPT, CONTEXT)
    claimant = CodeHandshake(CODE if right_code else "7-crossbow-gazebo", DIAL, CONTEXT)
    sent = accept.take()
    if honest_first:
        messages = [one(claimant), *messages]
    for message in messages:
        with contextlib.suppress(ProtocolError):
            accept.receive(message)
        sent += accept.take()
    assert [len(x) for x in sent] == [SPAKE2_BYTES + X25519_BYTES]
    assert accept.keys is None


@FAST
@given(
    role=st.sampled_from([DIAL, ACCEPT]),
    listed_key=st.booleans(),
    messages=st.lists(junk, min_size=1, max_size=3),
    honest_steps=st.integers(0, 1),
)
def test_identity_handshake_only_raises_protocol_errors(
    role: str, listed_key: bool, messages: list[bytes], honest_steps: int
) -> None:
    dial, accept = id_pair()
    hs = dial if role == DIAL else accept
    peer_id = public_of(BOB if role == DIAL else ALICE)
    if honest_steps and role == ACCEPT:
        accept.receive(one(dial))  # fuzz message 3
    elif listed_key:
        # Put the listed identity key where the message has one, to get past that check.
        for i, message in enumerate(messages):
            if len(message) in (X25519_BYTES + 32, X25519_BYTES + 32 + SIGNATURE_BYTES):
                messages[i] = message[:X25519_BYTES] + peer_id + message[X25519_BYTES + 32 :]
    for message in messages:
        try:
            hs.receive(message)
        except ProtocolError:
            break
    assert hs.keys is None


@settings(max_examples=300, deadline=None)
@given(
    delivered=st.integers(0, 3),
    seq=st.integers(0, 5) | st.integers(0, 2**64 - 1) | st.integers(-5, -1),
    sealed=st.binary(max_size=100),
)
def test_open_only_refuses_or_ignores_junk(delivered: int, seq: int, sealed: bytes) -> None:
    tx, rx = session_pair()
    for _ in range(delivered):
        rx.open(*tx.seal(b"x"))
    try:
        assert rx.open(seq, sealed) is None
    except IntegrityError:
        assert seq == delivered
    assert rx.expected == delivered


@settings(max_examples=300, deadline=None)
@given(
    sent=st.integers(0, 3),
    counter=st.integers(0, 5) | st.integers(0, 2**64 - 1),
    sealed=st.binary(max_size=100),
)
def test_on_ack_only_refuses_junk(sent: int, counter: int, sealed: bytes) -> None:
    tx, _ = session_pair()
    for _ in range(sent):
        tx.seal(b"x")
    with pytest.raises(IntegrityError):
        tx.on_ack(counter, sealed)
    assert len(tx.unacked()) == sent
