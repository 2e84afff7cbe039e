"""The job negotiation machines (freight.protocol.jobs), fed messages by hand
and by hypothesis against a small reference model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freight.protocol import jobs as j

JOB = "ab" * 16
DIGEST = "cd" * 32


def sender(manners: list[str] | None = None, requires: list[str] | None = None) -> j.SenderMachine:
    return j.SenderMachine(
        job=JOB,
        manners=manners or ["direct", "relay", "ref"],
        requires=requires or [],
        bytes=10,
        files=1,
        blake3=DIGEST,
    )


def sent(actions: list[j.Action]) -> list[j.JobMessage]:
    return [a.msg for a in actions if isinstance(a, j.Send)]


def finish(actions: list[j.Action]) -> j.Finish | None:
    done = [a for a in actions if isinstance(a, j.Finish)]
    return done[0] if done else None


def propose(m: j.SenderMachine) -> j.Propose:
    """Prepare the current attempt and return its proposal."""
    msgs = sent(m.prepared({"code": "1-a-b"}))
    assert len(msgs) == 1
    assert isinstance(msgs[0], j.Propose)
    return msgs[0]


def test_encode_decode_round_trip_and_garbage_refused() -> None:
    msg = j.Propose(job=JOB, attempt=1, manner="relay", offer={"code": "x"}, blake3=DIGEST)
    assert j.decode(j.encode(msg)) == msg
    for bad in (b"", b"\xff\xfe", b'{"t":"propose"}', b'{"t":"nope"}', b"[1,2]"):
        with pytest.raises(j.MalformedJobMessage):
            j.decode(bad)
    with pytest.raises(j.MalformedJobMessage, match="at most 65536 bytes"):
        j.decode(b" " * (j.MAX_JOB_MESSAGE + 1))
    with pytest.raises(j.MalformedJobMessage):
        j.decode(j.encode(msg).replace(JOB.encode(), b"../../etc"))


def test_sender_accepted_moves_and_ends_on_a_matching_result() -> None:
    m = sender(["relay"])
    assert m.start() == [j.Prepare("relay", 1)]
    p = propose(m)
    assert (p.manner, p.attempt, p.bytes, p.blake3) == ("relay", 1, 10, DIGEST)
    acts = m.receive(j.Accept(job=JOB, attempt=1, completion={"k": 1}))
    assert j.Move("relay", 1, {"code": "1-a-b"}, {"k": 1}) in acts
    assert m.moved() == []
    assert m.state is j.S.CONFIRMING
    done = finish(m.receive(j.Result(job=JOB, ok=True, bytes=10, blake3=DIGEST)))
    assert done == j.Finish(True, bytes=10, blake3=DIGEST)


def test_sender_falls_through_refusals_and_lists_every_reason() -> None:
    m = sender()
    m.start()
    propose(m)
    acts = m.receive(j.Refuse(job=JOB, attempt=1, reason="no listener here"))
    assert j.Prepare("relay", 2) in acts
    propose(m)
    acts = m.receive(j.Refuse(job=JOB, attempt=2, reason="no hub login on this host"))
    assert j.Prepare("ref", 3) in acts
    propose(m)
    acts = m.receive(j.Refuse(job=JOB, attempt=3, reason="not accepted"))
    done = finish(acts)
    assert done is not None
    assert not done.ok
    assert done.error == (
        "no manner worked: direct: no listener here; relay: no hub login on this host; "
        "ref: not accepted"
    )
    # The receiver hears that the sender gave up.
    assert sent(acts) == [j.Result(job=JOB, ok=False, error=done.error)]


def test_a_refusal_after_this_side_moved_ends_the_attempt() -> None:
    # By reference the sender's part is done once the data is stored: a
    # receiver whose fetch then fails refuses, and the sender moves on at once
    # instead of waiting for a result that will not come.
    m = sender(["ref", "relay"])
    m.start()
    propose(m)
    m.receive(j.Accept(job=JOB, attempt=1, completion={}))
    m.moved()
    assert m.state is j.S.CONFIRMING
    acts = m.receive(j.Refuse(job=JOB, attempt=1, reason="out: not a folder"))
    assert j.Prepare("relay", 2) in acts
    assert m.reasons == ["ref: out: not a folder"]


def test_sender_ignores_stale_and_foreign_messages() -> None:
    m = sender()
    m.start()
    propose(m)
    assert m.receive(j.Refuse(job="ef" * 16, attempt=1, reason="x")) == []
    assert m.receive(j.Accept(job=JOB, attempt=7)) == []
    m.receive(j.Refuse(job=JOB, attempt=1, reason="no"))
    assert m.receive(j.Accept(job=JOB, attempt=1)) == []  # the refused attempt
    with pytest.raises(j.JobTransitionError):
        m.moved()


def test_sender_skips_manners_lacking_a_requirement() -> None:
    m = sender(["direct", "relay", "ref"], ["resumable"])
    assert m.start() == [j.Prepare("relay", 1)]
    assert m.reasons == ["direct: does not give resumable"]


def test_a_failed_move_is_abandoned_and_the_next_manner_proposed() -> None:
    m = sender(["direct", "relay"])
    m.start()
    propose(m)
    m.receive(j.Accept(job=JOB, attempt=1, completion={}))
    acts = m.failed("cannot connect to 192.0.2.5:4000")
    assert sent(acts) == [j.Abandon(job=JOB, attempt=1, reason="cannot connect to 192.0.2.5:4000")]
    assert j.Prepare("relay", 2) in acts


def test_a_receiver_failing_to_move_tells_the_sender_who_moves_on() -> None:
    r = receiver()
    r.receive(proposal(1, "relay"))
    r.completed({})
    acts = r.failed("disk full")
    assert sent(acts) == [j.Refuse(job=JOB, attempt=1, reason="disk full")]
    assert r.state is j.S.OPEN
    m = sender(["relay", "ref"])
    m.start()
    propose(m)
    m.receive(j.Accept(job=JOB, attempt=1))
    acts = m.receive(sent(acts)[0])
    assert j.Record(1, "relay", "failed", "disk full") in acts
    assert j.Prepare("ref", 2) in acts
    assert sent(acts) == []  # no abandon: the receiver has given it up already


def test_sender_reports_a_mismatch() -> None:
    m = sender(["relay"])
    m.start()
    propose(m)
    m.receive(j.Accept(job=JOB, attempt=1))
    m.moved()
    bad = j.Result(job=JOB, ok=False, bytes=10, blake3="00" * 32, error="mismatch: …")
    done = finish(m.receive(bad))
    assert done is not None
    assert not done.ok
    assert done.error == "mismatch: …"
    assert m.state is j.S.FAILED


def receiver(accepts: list[str] | None = None, **kw: str) -> j.ReceiverMachine:
    return j.ReceiverMachine(job=JOB, accepts=accepts or ["direct", "relay", "ref"], unavailable=kw)


def proposal(attempt: int = 1, manner: str = "relay", **kw: object) -> j.Propose:
    fields: dict[str, object] = {"bytes": 10, "files": 1, "blake3": DIGEST} | kw
    return j.Propose(job=JOB, attempt=attempt, manner=manner, **fields)  # type: ignore[arg-type]


def test_receiver_refuses_with_reasons() -> None:
    r = receiver(["ref"], relay="no hub login on this host")
    cases = [
        (proposal(1, "carrier-pigeon"), "unknown manner 'carrier-pigeon'"),
        (proposal(2, "relay"), "relay: not accepted here (accepted: ref)"),
        (proposal(3, "ref", requires=["bidirectional"]), "ref: does not give bidirectional"),
        (proposal(4, "ref", requires=["teleport"]), "unknown requirement 'teleport'"),
    ]
    for p, reason in cases:
        assert sent(r.receive(p)) == [j.Refuse(job=JOB, attempt=p.attempt, reason=reason)]
        assert r.state is j.S.OPEN
    r2 = receiver(relay="no hub login on this host")
    assert sent(r2.receive(proposal())) == [
        j.Refuse(job=JOB, attempt=1, reason="relay: no hub login on this host")
    ]


def test_receiver_accepts_moves_and_checks_the_digest() -> None:
    r = receiver()
    p = proposal(offer={"code": "c"})
    assert r.receive(p) == [j.Complete(p)]
    acts = r.completed({"ticket": "t"})
    assert sent(acts) == [j.Accept(job=JOB, attempt=1, completion={"ticket": "t"})]
    assert j.Move("relay", 1, {"code": "c"}, {"ticket": "t"}) in acts
    assert r.receive(p) == []  # the same proposal again
    done = finish(r.moved(10, DIGEST))
    assert done == j.Finish(True, bytes=10, blake3=DIGEST)


def test_receiver_mismatch_is_sent_and_final() -> None:
    r = receiver()
    r.receive(proposal())
    r.completed({})
    acts = r.moved(9, "11" * 32)
    (result,) = sent(acts)
    assert isinstance(result, j.Result)
    assert not result.ok
    assert result.error.startswith("mismatch: received 9 bytes")
    assert r.state is j.S.FAILED


def test_receiver_abandon_and_sender_giving_up() -> None:
    r = receiver()
    r.receive(proposal(1, "direct"))
    r.completed({})
    acts = r.receive(j.Abandon(job=JOB, attempt=1, reason="cannot connect"))
    assert j.Cancel(1, "cannot connect") in acts
    assert r.state is j.S.OPEN
    acts = r.receive(proposal(2, "relay"))
    assert acts == [j.Complete(proposal(2, "relay"))]
    done = finish(r.receive(j.Result(job=JOB, ok=False, error="no manner worked: x")))
    assert done == j.Finish(False, "no manner worked: x")
    with pytest.raises(j.JobTransitionError):
        r.moved(1, DIGEST)


def test_tree_digest_is_order_free_and_sensitive() -> None:
    a = [("a/x", 1, "00" * 32), ("b", 2, "11" * 32)]
    assert j.tree_digest(a) == j.tree_digest(list(reversed(a)))
    assert j.tree_digest(a) != j.tree_digest([("a/x", 1, "00" * 32), ("b", 3, "11" * 32)])
    assert j.tree_digest(a) != j.tree_digest([("a/y", 1, "00" * 32), ("b", 2, "11" * 32)])


def test_parse_manners() -> None:
    assert j.parse_manners("ref, relay") == ["ref", "relay"]
    for bad in ("", "relay,relay", "pigeon"):
        with pytest.raises(ValueError):
            j.parse_manners(bad)


# --- against a reference model --------------------------------------------------------

answers = st.lists(
    st.one_of(
        st.tuples(st.just("refuse"), st.text("abcxyz ", min_size=1, max_size=8)),
        st.tuples(st.just("prepare_fail"), st.text("abc", min_size=1, max_size=4)),
        st.tuples(st.just("move_fail"), st.text("xyz", min_size=1, max_size=4)),
        st.tuples(st.just("timeout"), st.just("")),
        st.tuples(st.just("receiver_fail"), st.text("pq", min_size=1, max_size=4)),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(
    manners=st.permutations(list(j.MANNERS)).flatmap(
        lambda p: st.integers(1, 3).map(lambda n: list(p[:n]))
    ),
    requires=st.lists(st.sampled_from(j.REQUIREMENTS), unique=True, max_size=2),
    events=answers,
)
def test_any_sequence_of_refusals_ends_in_the_next_manner_or_a_final_refusal(
    manners: list[str], requires: list[str], events: list[tuple[str, str]]
) -> None:
    m = sender(manners, requires)
    # The model: the manners that satisfy the requirements, in order; every
    # failure moves to the next; the last ends the job with every reason.
    usable = [x for x in manners if not j.lacks(x, requires)]
    reasons = [f"{x}: does not give {', '.join(j.lacks(x, requires))}" for x in manners]
    expected_reasons: list[str] = []
    acts = m.start()
    at = 0
    for kind, text in events:
        if m.state in j.FINAL:
            break
        assert [a for a in acts if isinstance(a, j.Prepare)] == [j.Prepare(usable[at], at + 1)]
        if kind == "prepare_fail":
            acts = m.failed(text)
            expected_reasons.append(f"{usable[at]}: {text}")
        else:
            propose(m)
            if kind == "refuse":
                acts = m.receive(j.Refuse(job=JOB, attempt=at + 1, reason=text))
                expected_reasons.append(f"{usable[at]}: {text}")
            elif kind == "timeout":
                acts = m.timeout()
                expected_reasons.append(f"{usable[at]}: no answer from the receiver")
            elif kind == "receiver_fail":
                m.receive(j.Accept(job=JOB, attempt=at + 1))
                acts = m.receive(j.Refuse(job=JOB, attempt=at + 1, reason=text))
                assert not any(isinstance(x, j.Abandon) for x in sent(acts))
                expected_reasons.append(f"{usable[at]}: {text}")
            else:
                m.receive(j.Accept(job=JOB, attempt=at + 1))
                acts = m.failed(text)
                assert sent(acts)[0] == j.Abandon(job=JOB, attempt=at + 1, reason=text)
                expected_reasons.append(f"{usable[at]}: {text}")
        at += 1
    if at == len(usable) or not usable:
        done = finish(acts)
        assert done is not None
        assert not done.ok
        for reason in expected_reasons:
            assert reason in done.error
        for reason, x in zip(reasons, manners, strict=True):
            if x not in usable:
                assert reason in done.error
        assert m.state is j.S.FAILED
    else:
        assert m.state is j.S.PREPARING
        assert m.manner == usable[at]
        assert finish(acts) is None


other_job = "ef" * 16
messages = st.one_of(
    st.builds(
        j.Propose,
        job=st.sampled_from([JOB, other_job]),
        attempt=st.integers(1, 4),
        manner=st.sampled_from([*j.MANNERS, "pigeon"]),
        requires=st.lists(st.sampled_from([*j.REQUIREMENTS, "teleport"]), max_size=2),
        bytes=st.just(10),
        files=st.just(1),
        blake3=st.just(DIGEST),
    ),
    st.builds(j.Abandon, job=st.just(JOB), attempt=st.integers(1, 4), reason=st.just("gone")),
    st.builds(j.Accept, job=st.just(JOB), attempt=st.integers(1, 4)),
    st.builds(j.Result, job=st.just(JOB), ok=st.booleans(), error=st.just("x")),
)
local = st.sampled_from(["completed", "failed", "moved_ok", "moved_bad"])


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.one_of(messages, local), max_size=12))
def test_receiver_takes_any_sequence_and_answers_every_proposal(steps: list[object]) -> None:
    r = receiver(["relay", "ref"], ref="no luck")
    finished = 0
    for step in steps:
        before = (r.state, r.attempt)
        if isinstance(step, str):
            event = {
                "completed": lambda: r.completed({}),
                "failed": lambda: r.failed("broke"),
                "moved_ok": lambda: r.moved(10, DIGEST),
                "moved_bad": lambda: r.moved(9, DIGEST),
            }[step]
            try:
                acts = event()
            except j.JobTransitionError:
                assert (before[0], step.split("_")[0]) not in j.RECEIVER_TABLE
                continue
        else:
            assert isinstance(step, j.Propose | j.Abandon | j.Accept | j.Result)
            acts = r.receive(step)
            fresh = (
                isinstance(step, j.Propose)
                and step.job == JOB
                and step.attempt > before[1]
                and before[0] not in j.FINAL
            )
            if fresh:
                answers = [a for a in acts if isinstance(a, j.Send | j.Complete)]
                assert answers, "a fresh proposal is refused or prepared"
                for a in answers:
                    if isinstance(a, j.Send):
                        assert isinstance(a.msg, j.Refuse)
                        assert a.msg.reason
        for a in acts:
            if isinstance(a, j.Send):
                assert j.decode(j.encode(a.msg)) == a.msg
        finished += sum(1 for a in acts if isinstance(a, j.Finish))
        if before[0] in j.FINAL:
            assert acts == []
    assert finished <= 1
