"""Fuzzing the socket protocol's decoder: whatever a client sends, ``decode_frame`` answers
with one of the client events or a ``ProtocolError`` whose code docs/protocol.md documents, and
never raises anything else (an escaping exception closes the socket with 1011)."""

from __future__ import annotations

import json
import os
import string
import tempfile
from typing import Any

import pytest

from gateway.protocol.closes import CloseCode

# Hypothesis caches (constants, unicode tables) go to the temp dir, not into the repository; the
# example database is off (database=None below).
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "presence-hypothesis")
)

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gateway.exceptions import ProtocolError
from gateway.protocol.frames import (
    MAX_EPOCH_LENGTH,
    MAX_ID_LENGTH,
    MAX_SAFE_INTEGER,
    MAX_TIMESTAMP_LENGTH,
    MAX_TYPE_LENGTH,
    AuthRefresh,
    JoinRoom,
    LeaveRoom,
    MessageReceived,
    PingReceived,
    PongReceived,
    StreamAck,
    UnknownType,
    decode_frame,
)

#: The decoder's codes in docs/protocol.md's error table (``invalid_token`` and ``token_expired``
#: are decided by the socket edge, not by the decoder).
DOCUMENTED_CODES = {
    "invalid_json",
    "not_an_object",
    "missing_type",
    "invalid_type",
    "invalid_field",
    "binary_frame",
    "message_too_large",
}
EVENTS = (
    PongReceived,
    PingReceived,
    MessageReceived,
    AuthRefresh,
    JoinRoom,
    LeaveRoom,
    StreamAck,
    UnknownType,
)
KNOWN_TYPES = ("pong", "ping", "message", "auth", "join", "leave", "stream_ack")
#: Integers at the edges that matter: JavaScript's safe range, Firestore's signed 64 bits,
#: and beyond what msgspec decodes as a machine integer.
BOUNDARY_INTS = [
    MAX_SAFE_INTEGER,
    MAX_SAFE_INTEGER + 1,
    -MAX_SAFE_INTEGER,
    -MAX_SAFE_INTEGER - 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**30,
]

FUZZ = settings(
    max_examples=300,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)
#: ``type`` values: the known ones, near-misses, and any JSON value at all.
type_values = (
    st.sampled_from([*KNOWN_TYPES, "", "PONG", " pong", "x" * MAX_TYPE_LENGTH])
    | st.text(max_size=MAX_TYPE_LENGTH + 8)
    | st.text(alphabet=string.ascii_lowercase, min_size=60, max_size=70)
    | json_values
)
field_values = (
    st.sampled_from([None, "", "t", 0, -1, True, False, 1.5, *BOUNDARY_INTS])
    | st.integers(min_value=-(2**65), max_value=2**65)
    | st.sampled_from([MAX_ID_LENGTH, MAX_EPOCH_LENGTH, MAX_TIMESTAMP_LENGTH]).flatmap(
        lambda n: st.sampled_from(["x" * n, "x" * (n + 1), "é" * n])
    )
    | json_values
)


def valid_ident(ident: Any) -> bool:
    if ident is None:
        return True
    if isinstance(ident, str):
        return len(ident) <= MAX_ID_LENGTH
    return isinstance(ident, int) and not isinstance(ident, bool) and abs(ident) <= MAX_SAFE_INTEGER


max_sizes = st.sampled_from([4096, 65536]) | st.integers(min_value=1, max_value=200)


def outcome(text: str | None, data: bytes | None, max_bytes: int) -> Any:
    """The decoder's answer: an event, or the ProtocolError (checked against docs/protocol.md)."""
    try:
        event = decode_frame(text, data, max_bytes)
    except ProtocolError as exc:
        assert exc.code in DOCUMENTED_CODES, exc.code
        assert exc.message
        if exc.code == "message_too_large":
            assert exc.close_code == CloseCode.MESSAGE_TOO_BIG
        else:
            assert exc.close_code is None, exc
        return exc
    # Anything but a ProtocolError escaping here is the bug this module hunts.
    assert isinstance(event, EVENTS), event
    return event


def expected(value: Any) -> Any:
    """The documented decision for a decoded JSON value that fits in a frame: an event, or the
    error code."""
    if not isinstance(value, dict):
        return "not_an_object"
    if "type" not in value:
        return "missing_type"
    kind = value["type"]
    if not isinstance(kind, str) or not 1 <= len(kind) <= MAX_TYPE_LENGTH:
        return "invalid_type"
    if kind == "pong":
        return PongReceived()
    if kind == "ping":
        stamp = value.get("timestamp")
        if stamp is None or (isinstance(stamp, str) and len(stamp) <= MAX_TIMESTAMP_LENGTH):
            return PingReceived(stamp)
        return "invalid_field"
    if kind == "message":
        ident = value.get("id")
        if "data" not in value or not valid_ident(ident):
            return "invalid_field"
        return MessageReceived(value["data"], ident)
    if kind in ("join", "leave"):
        room, ident = value.get("room"), value.get("id")
        if not isinstance(room, str) or not valid_ident(ident):
            return "invalid_field"
        return (JoinRoom if kind == "join" else LeaveRoom)(room, ident)
    if kind == "stream_ack":
        epoch, offset = value.get("epoch"), value.get("offset")
        if not isinstance(epoch, str) or len(epoch) > MAX_EPOCH_LENGTH:
            return "invalid_field"
        if isinstance(offset, bool) or not isinstance(offset, int):
            return "invalid_field"
        return StreamAck(epoch, offset) if 0 <= offset <= MAX_SAFE_INTEGER else "invalid_field"
    if kind == "auth":
        token = value.get("token")
        return AuthRefresh(token) if isinstance(token, str) and token else "invalid_field"
    return UnknownType(kind)


def check_against_readme(text: str, value: Any, max_bytes: int) -> None:
    got = outcome(text, None, max_bytes)
    if len(text.encode()) > max_bytes:
        assert isinstance(got, ProtocolError) and got.code == "message_too_large"
        return
    want = expected(value)
    if isinstance(want, str):
        assert isinstance(got, ProtocolError) and got.code == want, (got, want)
    else:
        assert got == want


@FUZZ
@given(text=st.text(), max_bytes=max_sizes)
@example(text="", max_bytes=4096)
@example(text="   \t\n", max_bytes=4096)
@example(text="\x00", max_bytes=4096)
@example(text='{"type": NaN}', max_bytes=4096)
@example(text='{"type": "message", "data": 1e400}', max_bytes=4096)
@example(text='{"type": "message", "data": ' + "9" * 5000 + "}", max_bytes=65536)
@example(text='{"type": "ping", "type": "message", "data": 1}', max_bytes=4096)
@example(text='{"type": "\\ud800"}', max_bytes=4096)
@example(text="\ufeff{}", max_bytes=4096)
def test_any_text_is_an_event_or_a_documented_error(text: str, max_bytes: int) -> None:
    """Arbitrary text frames (st.text(): any code point but lone surrogates)."""
    got = outcome(text, None, max_bytes)
    if isinstance(got, EVENTS):
        # Cross-check with the standard library: what the decoder accepts is a JSON object.
        assert isinstance(json.loads(text), dict)


@FUZZ
@given(value=json_values, max_bytes=max_sizes, ascii_only=st.booleans())
def test_any_json_value_gets_the_documented_answer(
    value: Any, max_bytes: int, ascii_only: bool
) -> None:
    """Any JSON value, sent as text: the documented answer for it."""
    check_against_readme(json.dumps(value, ensure_ascii=ascii_only), value, max_bytes)


@FUZZ
@given(
    kind=type_values,
    fields=st.dictionaries(
        st.sampled_from(["timestamp", "data", "id", "token", "room", "epoch", "offset", "extra"]),
        field_values,
    ),
    max_bytes=st.sampled_from([4096, 65536]),
)
@example(kind="message", fields={"data": None, "id": True}, max_bytes=4096)
@example(kind="message", fields={"data": 1, "id": 10**1000}, max_bytes=4096)
@example(kind="auth", fields={"token": ""}, max_bytes=4096)
@example(kind="stream_ack", fields={"epoch": "x", "offset": 2**63}, max_bytes=4096)
@example(kind="stream_ack", fields={"epoch": "x", "offset": MAX_SAFE_INTEGER}, max_bytes=4096)
@example(kind="stream_ack", fields={"epoch": "x", "offset": MAX_SAFE_INTEGER + 1}, max_bytes=4096)
@example(kind="join", fields={"room": "r", "id": -(2**63) - 1}, max_bytes=4096)
@example(kind="x" * (MAX_TYPE_LENGTH + 1), fields={}, max_bytes=4096)
def test_any_type_with_any_fields_gets_the_documented_answer(
    kind: Any, fields: dict[str, Any], max_bytes: int
) -> None:
    """Objects whose ``type`` is any JSON value, with every field of every message type set to
    values of any JSON type."""
    value = {"type": kind, **fields}
    check_against_readme(json.dumps(value), value, max_bytes)


@FUZZ
@given(data=st.binary(max_size=300), max_bytes=max_sizes)
def test_any_binary_frame_is_refused(data: bytes, max_bytes: int) -> None:
    """Binary frames: ``binary_frame``, or ``message_too_large`` (close 1009) over the limit."""
    got = outcome(None, data, max_bytes)
    assert isinstance(got, ProtocolError)
    assert got.code == ("message_too_large" if len(data) > max_bytes else "binary_frame")


@FUZZ
@given(data=st.binary(max_size=300), max_bytes=max_sizes)
def test_any_bytes_decoded_leniently_are_an_event_or_a_documented_error(
    data: bytes, max_bytes: int
) -> None:
    """Arbitrary bytes turned into text the ways a lenient server might (latin-1, and UTF-8
    with replacement characters): the decoder never raises anything undocumented."""
    outcome(data.decode("latin-1"), None, max_bytes)
    outcome(data.decode("utf-8", errors="replace"), None, max_bytes)


@FUZZ
@given(
    text=st.text(alphabet=st.characters(codec=None, categories=["Cs", "L", "N", "P"])),
    max_bytes=max_sizes,
)
@example(text="\ud800", max_bytes=4096)
@example(text="\ud800" * 2000, max_bytes=4096)
@example(text='{"type": "' + "\udc80" * 20 + '"}', max_bytes=64)
def test_text_with_lone_surrogates_is_refused_as_documented(text: str, max_bytes: int) -> None:
    """Docs: ``invalid_json`` for a frame that is "not encodable UTF-8". A ``str`` holding
    lone surrogates (what ``bytes.decode(errors="surrogateescape")`` produces) is that; the
    answer may also be ``message_too_large`` for a long one, but never a UnicodeEncodeError."""
    got = outcome(text, None, max_bytes)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert isinstance(got, ProtocolError)
        assert got.code in ("invalid_json", "message_too_large")


@pytest.mark.parametrize("depth", [2_000, 10_000, 100_000])
@pytest.mark.parametrize(
    ("opening", "closing"), [("[", "]"), ('{"a":', "}")], ids=["arrays", "objects"]
)
def test_deep_nesting_is_invalid_json_not_a_recursion_error(
    depth: int, opening: str, closing: str
) -> None:
    """Nesting deeper than the interpreter's recursion limit inside ``data``: the decoder's
    RecursionError is reported as ``invalid_json`` (when the frame fits the size limit)."""
    inner = opening * depth + ("1" if opening != "[" else "") + closing * depth
    text = '{"type": "message", "data": ' + inner + "}"
    got = outcome(text, None, len(text))
    assert isinstance(got, ProtocolError) and got.code == "invalid_json"
    assert outcome(text, None, len(text) - 1).code == "message_too_large"


def test_shallow_nesting_still_decodes() -> None:
    """A few hundred levels are fine: the message is delivered as is."""
    inner = "[" * 300 + "]" * 300
    got = outcome('{"type": "message", "data": ' + inner + ', "id": 1}', None, 65536)
    assert isinstance(got, MessageReceived) and got.id == 1
