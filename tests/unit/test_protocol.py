"""The socket protocol's decisions, without sockets."""

from __future__ import annotations

import pytest

from gateway.exceptions import ProtocolError
from gateway.protocol.closes import CloseCode
from gateway.protocol.frames import (
    MessageReceived,
    PingReceived,
    PongReceived,
    UnknownType,
    decode_frame,
)

LIMIT = 1024


def decode(text: str) -> object:
    return decode_frame(text, None, LIMIT)


def error_code(text: str | None, data: bytes | None = None) -> tuple[str, int | None]:
    with pytest.raises(ProtocolError) as caught:
        decode_frame(text, data, LIMIT)
    return caught.value.code, caught.value.close_code


def test_pong_is_recognised() -> None:
    """The guide's pong frame decodes to a pong event; extra fields are tolerated."""
    assert isinstance(decode('{"type": "pong"}'), PongReceived)
    assert isinstance(decode('{"type": "pong", "timestamp": "x"}'), PongReceived)


def test_client_ping_carries_its_timestamp() -> None:
    """A client ping decodes with its optional timestamp."""
    assert decode('{"type": "ping", "timestamp": "2025-10-23T10:30:00"}') == PingReceived(
        "2025-10-23T10:30:00"
    )
    assert decode('{"type": "ping"}') == PingReceived(None)


def test_message_carries_data_and_id() -> None:
    """A client message keeps its data (any JSON) and its optional id."""
    assert decode('{"type": "message", "data": {"a": [1, 2]}, "id": "m1"}') == MessageReceived(
        {"a": [1, 2]}, "m1"
    )
    assert decode('{"type": "message", "data": null}') == MessageReceived(None, None)


def test_unknown_type_is_reported_not_rejected() -> None:
    """An unknown type is a distinct event (logged and ignored by the edge)."""
    assert decode('{"type": "dance"}') == UnknownType("dance")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("", "invalid_json"),
        ('{"type": "pong"', "invalid_json"),
        ("[1, 2]", "not_an_object"),
        ('"pong"', "not_an_object"),
        ("42", "not_an_object"),
        ("null", "not_an_object"),
        ("{}", "missing_type"),
        ('{"data": 1}', "missing_type"),
        ('{"type": 5}', "invalid_type"),
        ('{"type": null}', "invalid_type"),
        ('{"type": ""}', "invalid_type"),
        ('{"type": ["pong"]}', "invalid_type"),
        ('{"type": "' + "x" * 65 + '"}', "invalid_type"),
        ('{"type": "ping", "timestamp": 12}', "invalid_field"),
        ('{"type": "message"}', "invalid_field"),
        ('{"type": "message", "data": 1, "id": true}', "invalid_field"),
        ('{"type": "message", "data": 1, "id": {"x": 1}}', "invalid_field"),
    ],
)
def test_bad_frames_get_an_error_code_and_keep_the_socket(frame: str, code: str) -> None:
    """Each malformed frame maps to its documented error code and no close."""
    assert error_code(frame) == (code, None)


def test_binary_frames_are_refused_with_a_reply() -> None:
    """The protocol is JSON text; a binary frame gets binary_frame."""
    assert error_code(None, b'{"type": "pong"}') == ("binary_frame", None)


def test_oversized_frames_close_with_1009() -> None:
    """Text or binary frames over the limit close the socket with 1009."""
    big = '{"type": "message", "data": "' + "x" * LIMIT + '"}'
    assert error_code(big) == ("message_too_large", CloseCode.MESSAGE_TOO_BIG)
    assert error_code(None, b"x" * (LIMIT + 1)) == ("message_too_large", CloseCode.MESSAGE_TOO_BIG)


def test_multibyte_text_is_measured_in_utf8_bytes() -> None:
    """The limit counts UTF-8 bytes, not characters."""
    text = '{"type": "message", "data": "' + "é" * (LIMIT // 2) + '"}'
    assert len(text) < LIMIT * 2
    assert error_code(text) == ("message_too_large", CloseCode.MESSAGE_TOO_BIG)


def test_lone_surrogates_are_invalid_json() -> None:
    """Text that cannot be UTF-8 encoded is reported, not crashed on."""
    assert error_code('{"type": "\ud800"}') == ("invalid_json", None)
