"""gateway.protocol.session: one socket's protocol decisions, driven without a server: every reply,
every close code, the rate limit and the token's expiry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.protocol.closes import CloseCode
from gateway.protocol.frames import (
    AuthRefresh,
    JoinRoom,
    LeaveRoom,
    MessageReceived,
    PongReceived,
    UnknownType,
)
from gateway.protocol.messages import (
    Ack,
    AuthOk,
    ErrorMessage,
    Joined,
    Left,
    RoomErrorMessage,
    ServerPong,
)
from gateway.protocol.rooms import RoomRefused
from gateway.protocol.session import Close, Session, SessionLimits, Step

AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
STAMP = "2026-12-03T12:00:00.000000+00:00"


def session(**limits: float) -> Session:
    return Session(SessionLimits(**limits))  # type: ignore[arg-type]


def test_a_ping_is_answered_with_a_server_pong() -> None:
    assert session().receive('{"type":"ping"}', None, 0.0, AT) == Step(
        replies=(ServerPong("pong", STAMP),)
    )


def test_a_message_is_acknowledged_with_its_id_and_handed_to_the_application() -> None:
    step = session().receive('{"type":"message","data":{"a":1},"id":"m1"}', None, 0.0, AT)
    assert step.replies == (Ack("ack", STAMP, "m1"),)
    assert step.work == MessageReceived({"a": 1}, "m1")
    assert step.close is None


@pytest.mark.parametrize(
    ("text", "work"),
    [
        ('{"type":"pong"}', PongReceived()),
        ('{"type":"pong","timestamp":"x"}', PongReceived()),
        ('{"type":"auth","token":"t"}', AuthRefresh("t")),
        ('{"type":"join","room":"r","id":1}', JoinRoom("r", 1)),
        ('{"type":"leave","room":"r"}', LeaveRoom("r", None)),
        ('{"type":"what"}', UnknownType("what")),
    ],
)
def test_frames_whose_answer_needs_io_are_handed_on_without_a_reply(
    text: str, work: object
) -> None:
    assert session().receive(text, None, 0.0, AT) == Step(work=work)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "data", "code"),
    [
        ("not json", None, "invalid_json"),
        ("[1]", None, "not_an_object"),
        ("{}", None, "missing_type"),
        ('{"type":7}', None, "invalid_type"),
        ('{"type":"message"}', None, "invalid_field"),
        (None, b"\x00", "binary_frame"),
    ],
)
def test_a_frame_breaking_the_protocol_gets_an_error_reply_and_the_socket_stays(
    text: str | None, data: bytes | None, code: str
) -> None:
    step = session().receive(text, data, 0.0, AT)
    [reply] = step.replies
    assert isinstance(reply, ErrorMessage) and reply.code == code and reply.timestamp == STAMP
    assert step.close is None and step.work is None


def test_an_oversized_frame_closes_with_1009() -> None:
    step = session(max_message_bytes=16).receive(
        '{"type":"message","data":"' + "x" * 20 + '"}', None, 0.0, AT
    )
    assert step.replies == ()
    assert step.close is not None
    assert (step.close.code, step.close.counted_as) == (
        CloseCode.MESSAGE_TOO_BIG,
        "message_too_large",
    )


def test_a_flood_beyond_twice_the_rate_closes_with_4429() -> None:
    """The bucket holds a burst of twice the rate; the next frame in the same instant closes."""
    s = session(max_messages_per_second=5)
    steps = [s.receive('{"type":"ping"}', None, 100.0, AT) for _ in range(11)]
    assert all(step.close is None for step in steps[:10])
    assert steps[10].close == Close(
        CloseCode.RATE_LIMITED, "too many messages", "too many messages"
    )
    # a second later the bucket has refilled by the rate
    assert s.receive('{"type":"ping"}', None, 101.0, AT).close is None


def test_no_rate_limit_when_it_is_zero() -> None:
    s = session(max_messages_per_second=0)
    assert all(s.receive('{"type":"ping"}', None, 0.0, AT).close is None for _ in range(1000))


def test_the_pong_fast_path_takes_only_the_clients_exact_pong_within_the_rate() -> None:
    s = session(max_messages_per_second=1)
    assert s.take_pong('{"type":"pong"}', 0.0) is True
    assert s.take_pong('{"type": "pong"}', 0.0) is False  # another spelling: receive() decodes it
    assert s.take_pong('{"type":"pong"}', 0.0) is True  # the burst is twice the rate
    assert s.take_pong('{"type":"pong"}', 0.0) is False  # over it: receive() closes the flood
    assert s.receive('{"type":"pong"}', None, 0.0, AT).close is not None


def test_a_refreshed_token_is_answered_with_its_expiry_and_moves_the_deadline() -> None:
    s = Session(SessionLimits(token_grace=60), token_expires_at=1_000.0)
    assert s.token_expired(1_061.0) and not s.token_expired(1_059.0)
    step = s.refreshed(AT.timestamp() + 3600, AT)
    assert step.replies == (AuthOk("auth_ok", "2026-12-03T13:00:00.000000+00:00", STAMP),)
    assert not s.token_expired(AT.timestamp() + 3600 + 59)
    assert s.token_expired(AT.timestamp() + 3600 + 61)


def test_a_refused_token_is_answered_and_the_old_deadline_stands() -> None:
    s = Session(SessionLimits(token_grace=0), token_expires_at=1_000.0)
    assert s.refresh_refused("token expired", AT) == Step(
        replies=(ErrorMessage("error", "invalid_token", "token expired", STAMP),)
    )
    assert s.token_expires_at == 1_000.0


def test_without_auth_a_token_never_expires() -> None:
    assert not Session(SessionLimits(), token_expires_at=0.0).token_expired(1e12)


def test_room_answers() -> None:
    s = session()
    assert s.room_answer(JoinRoom("r", 1), None, AT).replies == (Joined("joined", "r", STAMP, 1),)
    assert s.room_answer(LeaveRoom("r", None), None, AT).replies == (Left("left", "r", STAMP),)
    refused = RoomRefused("room_forbidden", "not allowed", "r")
    assert s.room_answer(JoinRoom("r", "j"), refused, AT).replies == (
        RoomErrorMessage("error", "room_forbidden", "not allowed", STAMP, "r", "j"),
    )
