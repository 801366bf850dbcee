"""A corpus of hostile input against a real gateway process, then a check that it survived.

Three tables, each row a name, what is sent and the documented answer (docs/protocol.md, api.md):

* ``FRAME_CASES``: one frame on an admitted socket (malformed JSON and UTF-8, lone surrogates,
  huge numbers, deep nesting, wrong types in every field of every message type, duplicate keys,
  NaN, null bytes, long types, oversized and fragmented frames). Replies are checked, and after
  every reply (or deliberate silence) a ``ping`` must still be answered: the socket stays open.
* ``HANDSHAKE_CASES``: user ids (path traversal, encodings, 10,000 characters) and tokens
  (missing, garbage, forged, expired, another user's). Each is refused with its close code and
  writes nothing to Firestore.
* ``REST_CASES``: forged callbacks and admin calls (401), bodies that are not JSON objects (400),
  oversized bodies (413).

Plus a flood (4429), a slow handshake that must not stall anyone, and a forged callback aimed
at a live session. A bystander socket is opened before the first case and listens throughout;
the last test checks the process is alive, the bystander's pings never stalled, and Firestore
holds no corrupt document and nothing for the ids the gateway refused.

How raw input is sent: a text frame with invalid UTF-8 goes through the ``websockets`` client
as ``send(raw_bytes, text=True)``, which puts the bytes in a *text* frame without validating
them (the normal ``send(str)`` path cannot produce invalid UTF-8). Binary frames with invalid
UTF-8 are separate cases (``binary_frame``). The slow handshake uses a raw TCP socket.

Cases marked ``BUG`` in their assertion message assert the documented behaviour, which the
gateway does not have at the time of writing (see the module's report).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.storage.schema import (
    ACTIVE_SESSION_FIELDS,
    ACTIVE_SESSIONS,
    CLOSE_CODE,
    CONNECTED_AT,
    DISCONNECTED_AT,
    INSTANCE_ID,
    INTERNAL_URL,
    IS_ACTIVE,
    IS_SIGNED_IN,
    LAST_CONNECTED_AT,
    LAST_PONG_AT,
    LAST_SIGN_OUT_AT,
    MEMBERS,
    SESSIONS,
    SHARD,
    SIGN_OUT_CLAIM,
    SIGN_OUT_CLAIMED_AT,
    SIGNED_OUT_AT,
    UPDATED_AT,
    USER_ID,
)
from tests.support import (
    UNIT,
    GatewayProc,
    TokenMinter,
    eventually,
    loads,
    start_gateway,
    unsigned_token,
)

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_only]

MAX_BYTES = 4096
CALLBACK_TOKEN = "corpus-callback-" + secrets.token_urlsafe(16)
#: docs/protocol.md: 1-128 characters of A-Z a-z 0-9 _ - . @ : + =, and a valid
#: Firestore document id (not "." nor "..", not __x__).
VALID_USER_ID = re.compile(r"[A-Za-z0-9_\-.@:+=]{1,128}")
HUGE_INT = 10**1000

#: Users this module connected with (their documents are checked strictly at the end).
ADMITTED: set[str] = set()
#: User ids (as the gateway sees them, percent-decoded) that were refused: nothing may exist
#: in Firestore for them.
REFUSED: set[str] = set()


def uid() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def valid_user_id(user_id: str) -> bool:
    return (
        VALID_USER_ID.fullmatch(user_id) is not None
        and user_id not in (".", "..")
        and not (user_id.startswith("__") and user_id.endswith("__"))
    )


@pytest.fixture(scope="module")
def gateway(firestore_host: str, project_id: str, minter: TokenMinter) -> Iterator[GatewayProc]:
    """This module's own gateway: the shared one's settings (4 KB frames, real ID tokens) plus a
    callback token, so that forged callbacks meet the 401 check rather than a 503."""
    proc = start_gateway(
        firestore_host,
        project_id,
        minter,
        WS_MAX_MESSAGE_BYTES=str(MAX_BYTES),
        GATEWAY_CALLBACK_TOKEN=CALLBACK_TOKEN,
    )
    yield proc
    proc.stop()


@dataclass
class Bystander:
    """A well-behaved socket opened before the corpus, recording the server's ping stamps."""

    user: str
    ws: ClientConnection
    ping_stamps: list[datetime] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def listen(self) -> None:
        async for frame in self.ws:
            message = loads(frame)
            if message.get("type") == "ping":
                self.ping_stamps.append(datetime.fromisoformat(message["timestamp"]))


@pytest.fixture(scope="module", autouse=True)
async def bystander(gateway: GatewayProc) -> AsyncIterator[Bystander]:
    user = uid()
    ADMITTED.add(user)
    async with connect(gateway.ws(user)) as ws:
        watcher = Bystander(user, ws)
        watcher.task = asyncio.create_task(watcher.listen())

        async def pinged() -> bool:
            return bool(watcher.ping_stamps)

        await eventually(pinged)
        yield watcher
        watcher.task.cancel()


# --- what is sent, what is expected ----------------------------------------------------------


@dataclass(frozen=True)
class TextBytes:
    """Raw bytes in a *text* frame, unvalidated (websockets' ``send(data, text=True)``)."""

    data: bytes


@dataclass(frozen=True)
class Fragments:
    """One text message split over several frames."""

    parts: tuple[str, ...]


@dataclass(frozen=True)
class Token:
    """A frame built around a token made at run time (``{token}`` in ``template``)."""

    template: str
    make: Callable[[TokenMinter, str, str], str]  # (minter, project, user) -> token


Frame = str | bytes | TextBytes | Fragments | Token


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class Reply:
    """A reply frame of this ``type``; for errors its ``code``; for acks its echoed ``id``
    (``ABSENT``: no ``id`` key). The socket stays open afterwards."""

    type: str
    code: str | None = None
    id: Any = None


def error(code: str) -> Reply:
    return Reply("error", code)


def ack(ident: Any = ABSENT) -> Reply:
    return Reply("ack", id=ident)


PONG = Reply("pong")


@dataclass(frozen=True)
class Silent:
    """No reply at all (pongs, unknown types); the socket stays open."""


SILENT = Silent()


@dataclass(frozen=True)
class Close:
    """The socket is closed with this code (and reason, when given)."""

    code: int
    reason: str | None = None


@dataclass(frozen=True)
class FailedUtf8:
    """Docs: a text frame that is not UTF-8 fails the connection (RFC 6455 section 8.1). With
    the default wsproto implementation uvicorn drops it without a close frame (the client sees
    1006, the session records 1007); ``WS_IMPLEMENTATION=websockets-sansio`` sends a 1007
    close. Either is accepted; an answer that keeps the socket open is not."""


FAILED_UTF8 = FailedUtf8()
Expect = Reply | Silent | Close | FailedUtf8


def sized(size: int) -> str:
    """A valid message frame of exactly ``size`` UTF-8 bytes."""
    head, tail = '{"type": "message", "id": "edge", "data": "', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


def nested(depth: int, opening: str = "[", closing: str = "]", leaf: str = "") -> str:
    return opening * depth + leaf + closing * depth


def message(data: str, ident: str = '"m"') -> str:
    return f'{{"type": "message", "data": {data}, "id": {ident}}}'


def stream_ack(offset: object, epoch: str = "e") -> str:
    return json.dumps({"type": "stream_ack", "epoch": epoch, "offset": offset})


def frame_case(name: str, frame: Frame, expect: Expect) -> Any:
    return pytest.param(frame, expect, id=name)


FRAME_CASES = [
    # -- not JSON at all
    frame_case("empty-frame", "", error("invalid_json")),
    frame_case("whitespace-only", " \t\r\n ", error("invalid_json")),
    frame_case("null-byte-frame", "\x00", error("invalid_json")),
    frame_case("unclosed-object", '{"type": "ping"', error("invalid_json")),
    frame_case("trailing-garbage", '{"type": "ping"} x', error("invalid_json")),
    frame_case("two-objects", '{"type": "ping"}{"type": "ping"}', error("invalid_json")),
    frame_case("byte-order-mark", '\ufeff{"type": "ping"}', error("invalid_json")),
    frame_case("single-quotes", "{'type': 'ping'}", error("invalid_json")),
    frame_case("raw-control-char-in-string", '{"type": "a\x00b"}', error("invalid_json")),
    # -- NaN / Infinity literals are not JSON
    frame_case("nan-literal", message("NaN"), error("invalid_json")),
    frame_case("infinity-literal", message("Infinity"), error("invalid_json")),
    frame_case("minus-infinity-literal", message("-Infinity"), error("invalid_json")),
    # -- huge numbers: floats beyond double range are refused; big integers are JSON integers
    frame_case("float-1e400-data", message("1e400"), error("invalid_json")),
    frame_case("float-minus-1e400-data", message("-1e400"), error("invalid_json")),
    frame_case("float-1e400-id", message("1", "1e400"), error("invalid_json")),
    frame_case("int-10**1000-data", message(str(HUGE_INT)), ack("m")),
    frame_case("int-10**1000-id", message("1", str(HUGE_INT)), error("invalid_field")),
    # -- integers past JavaScript's safe range (2^53-1), and past Firestore's 64 bits: refused
    # at the edge, so none reaches a write-behind batch (a stream_ack offset of 2^63 used to
    # fail every commit of the instance until it restarted)
    frame_case("id-2^53-1-is-echoed", message("1", str(2**53 - 1)), ack(2**53 - 1)),
    frame_case("id-minus-2^53-1-is-echoed", message("1", str(-(2**53 - 1))), ack(-(2**53 - 1))),
    frame_case("id-2^53", message("1", str(2**53)), error("invalid_field")),
    frame_case("id-string-129-chars", message("1", '"' + "i" * 129 + '"'), error("invalid_field")),
    frame_case("stream-ack-offset-2^53-1", stream_ack(2**53 - 1), SILENT),
    frame_case("stream-ack-offset-2^53", stream_ack(2**53), error("invalid_field")),
    frame_case("stream-ack-offset-2^63-1", stream_ack(2**63 - 1), error("invalid_field")),
    frame_case("stream-ack-offset-2^63", stream_ack(2**63), error("invalid_field")),
    frame_case("stream-ack-offset-2^64", stream_ack(2**64), error("invalid_field")),
    frame_case("stream-ack-offset-10**1000", stream_ack(HUGE_INT), error("invalid_field")),
    frame_case("stream-ack-offset-negative", stream_ack(-1), error("invalid_field")),
    frame_case("stream-ack-offset-float", stream_ack(1.5), error("invalid_field")),
    frame_case("stream-ack-epoch-65-chars", stream_ack(1, "e" * 65), error("invalid_field")),
    frame_case(
        "ping-timestamp-65-chars",
        '{"type": "ping", "timestamp": "' + "t" * 65 + '"}',
        error("invalid_field"),
    ),
    frame_case("int-10**1000-type", f'{{"type": {HUGE_INT}}}', error("invalid_type")),
    frame_case(
        "int-10**1000-timestamp",
        f'{{"type": "ping", "timestamp": {HUGE_INT}}}',
        error("invalid_field"),
    ),
    # -- deep nesting: past the interpreter's recursion limit the decoder fails -> invalid_json
    frame_case("nested-arrays-300-in-data", message(nested(300)), ack("m")),
    frame_case("nested-objects-500-in-data", message(nested(500, '{"":', "}", "1")), ack("m")),
    frame_case("nested-arrays-2000-in-data", message(nested(2000)), error("invalid_json")),
    frame_case("nested-arrays-2000-top-level", nested(2000), error("invalid_json")),
    frame_case("nested-arrays-100000-in-data", message(nested(100_000)), Close(1009)),
    frame_case(
        "nested-objects-100000-in-data", message(nested(100_000, '{"":', "}", "1")), Close(1009)
    ),
    # -- lone surrogates (JSON escapes: the only way to put them in a valid UTF-8 frame)
    frame_case("lone-surrogate-type", '{"type": "\\ud800"}', error("invalid_json")),
    frame_case("lone-surrogate-data", message('"\\udc00x"'), error("invalid_json")),
    frame_case("lone-surrogate-id", message("1", '"\\ud800"'), error("invalid_json")),
    frame_case(
        "lone-surrogate-timestamp",
        '{"type": "ping", "timestamp": "\\udfff"}',
        error("invalid_json"),
    ),
    frame_case(
        "lone-surrogate-token", '{"type": "auth", "token": "\\ud800"}', error("invalid_json")
    ),
    frame_case("valid-surrogate-pair-data", message('"\\ud83d\\ude00"'), ack("m")),
    # -- malformed UTF-8 in a text frame (raw bytes, see the module docstring)
    frame_case("utf8-invalid-start-byte", TextBytes(b'{"type": "\xff\xfe"}'), FAILED_UTF8),
    frame_case("utf8-encoded-surrogate", TextBytes(b'{"type": "\xed\xa0\x80"}'), FAILED_UTF8),
    frame_case("utf8-overlong-slash", TextBytes(b'{"type": "\xc0\xaf"}'), FAILED_UTF8),
    frame_case("utf8-truncated-sequence", TextBytes(b'{"type": "pong"}\xe2\x82'), FAILED_UTF8),
    # -- binary frames (the protocol is JSON text), including invalid UTF-8 in one
    frame_case("binary-invalid-utf8", b'{"type": "\xff"}', error("binary_frame")),
    frame_case("binary-valid-json", b'{"type": "ping"}', error("binary_frame")),
    frame_case("binary-empty", b"", error("binary_frame")),
    # -- not an object
    frame_case("array", "[1, 2, 3]", error("not_an_object")),
    frame_case("string", '"ping"', error("not_an_object")),
    frame_case("number", "42", error("not_an_object")),
    frame_case("null", "null", error("not_an_object")),
    frame_case("boolean", "true", error("not_an_object")),
    # -- type: missing, wrong JSON type, empty, too long
    frame_case("type-missing", '{"data": 1}', error("missing_type")),
    frame_case("type-key-capitalised", '{"Type": "ping"}', error("missing_type")),
    frame_case("type-integer", '{"type": 7}', error("invalid_type")),
    frame_case("type-float", '{"type": 1.5}', error("invalid_type")),
    frame_case("type-null", '{"type": null}', error("invalid_type")),
    frame_case("type-boolean", '{"type": true}', error("invalid_type")),
    frame_case("type-array", '{"type": ["ping"]}', error("invalid_type")),
    frame_case("type-object", '{"type": {"type": "ping"}}', error("invalid_type")),
    frame_case("type-empty-string", '{"type": ""}', error("invalid_type")),
    frame_case("type-65-chars", json.dumps({"type": "p" * 65}), error("invalid_type")),
    frame_case("type-4000-chars", json.dumps({"type": "p" * 4000}), error("invalid_type")),
    frame_case("type-64-chars-is-unknown", json.dumps({"type": "p" * 64}), SILENT),
    # -- unknown types, including the server's own and odd characters: ignored
    frame_case("type-null-byte-escape", '{"type": "\\u0000"}', SILENT),
    frame_case("type-markup", '{"type": "<script>alert(1)</script>"}', SILENT),
    frame_case("type-server-error", '{"type": "error", "code": "invalid_json"}', SILENT),
    frame_case("type-server-timeout", '{"type": "timeout"}', SILENT),
    frame_case("type-case-variant", '{"type": "PING"}', SILENT),
    # -- pong: extra fields of any type are tolerated
    frame_case("pong-with-junk-fields", '{"type": "pong", "timestamp": [1], "data": {}}', SILENT),
    # -- ping.timestamp: optional string
    frame_case(
        "ping-timestamp-integer", '{"type": "ping", "timestamp": 1}', error("invalid_field")
    ),
    frame_case(
        "ping-timestamp-float", '{"type": "ping", "timestamp": 1.5}', error("invalid_field")
    ),
    frame_case(
        "ping-timestamp-bool", '{"type": "ping", "timestamp": true}', error("invalid_field")
    ),
    frame_case("ping-timestamp-array", '{"type": "ping", "timestamp": []}', error("invalid_field")),
    frame_case(
        "ping-timestamp-object", '{"type": "ping", "timestamp": {}}', error("invalid_field")
    ),
    frame_case("ping-timestamp-null-is-absent", '{"type": "ping", "timestamp": null}', PONG),
    frame_case("ping-timestamp-garbage-string", '{"type": "ping", "timestamp": "\\u0000"}', PONG),
    # -- message: data required (any JSON, null included); id optional string or integer
    frame_case("message-without-data", '{"type": "message", "id": "m"}', error("invalid_field")),
    frame_case("message-data-null", message("null"), ack("m")),
    frame_case("message-id-bool", message("1", "true"), error("invalid_field")),
    frame_case("message-id-float", message("1", "1.5"), error("invalid_field")),
    frame_case("message-id-array", message("1", '["m"]'), error("invalid_field")),
    frame_case("message-id-object", message("1", '{"id": "m"}'), error("invalid_field")),
    frame_case("message-id-null-is-absent", message("1", "null"), ack()),
    frame_case("message-id-negative-int", message("1", "-42"), ack(-42)),
    frame_case(
        "message-id-below-int64", message("1", "-9223372036854775809"), error("invalid_field")
    ),
    frame_case("message-null-bytes", message('"\\u0000"', '"\\u0000"'), ack("\x00")),
    # -- auth: token a non-empty string, and a valid one for this user
    frame_case("auth-token-missing", '{"type": "auth"}', error("invalid_field")),
    frame_case("auth-token-integer", '{"type": "auth", "token": 1}', error("invalid_field")),
    frame_case("auth-token-null", '{"type": "auth", "token": null}', error("invalid_field")),
    frame_case("auth-token-array", '{"type": "auth", "token": ["t"]}', error("invalid_field")),
    frame_case("auth-token-object", '{"type": "auth", "token": {}}', error("invalid_field")),
    frame_case("auth-token-bool", '{"type": "auth", "token": true}', error("invalid_field")),
    frame_case("auth-token-empty", '{"type": "auth", "token": ""}', error("invalid_field")),
    frame_case("auth-token-garbage", '{"type": "auth", "token": "a.b.c"}', error("invalid_token")),
    frame_case(
        "auth-token-3900-chars",
        json.dumps({"type": "auth", "token": "t" * 3900}),  # the frame limit is 4 KB
        error("invalid_token"),
    ),
    frame_case(
        "auth-token-of-another-user",
        Token('{{"type": "auth", "token": "{token}"}}', lambda m, p, u: m("other-" + u)),
        error("invalid_token"),
    ),
    frame_case(
        "auth-token-expired",
        Token(
            '{{"type": "auth", "token": "{token}"}}',
            lambda m, p, u: unsigned_token(p, u, exp=int(time.time()) - 600, iat=1, auth_time=1),
        ),
        error("invalid_token"),
    ),
    frame_case(
        "auth-token-foreign-project",
        Token('{{"type": "auth", "token": "{token}"}}', lambda m, p, u: unsigned_token("x", u)),
        error("invalid_token"),
    ),
    # -- duplicate keys: the last one wins (as with json.loads)
    frame_case("duplicate-type-last-wins", '{"type": "message", "type": "ping"}', PONG),
    frame_case(
        "duplicate-type-message-last",
        '{"type": "ping", "type": "message", "data": 1, "id": "dup"}',
        ack("dup"),
    ),
    frame_case("duplicate-id-last-wins", message("1", '"a", "id": "b"'), ack("b")),
    # -- sizes: WS_MAX_MESSAGE_BYTES=4096 counts UTF-8 bytes, whole messages
    frame_case("exactly-4096-bytes", sized(MAX_BYTES), ack("edge")),
    frame_case("exactly-4097-bytes", sized(MAX_BYTES + 1), Close(1009)),
    frame_case("oversized-ascii", json.dumps({"type": "message", "data": "x" * 5000}), Close(1009)),
    frame_case(
        "oversized-multibyte-2100-chars",
        json.dumps({"type": "message", "data": "\u00e9" * 2100}, ensure_ascii=False),
        Close(1009),
    ),
    frame_case("oversized-binary", b"x" * 5000, Close(1009)),
    frame_case("oversized-in-fragments", Fragments(("x" * 3000, "x" * 3000)), Close(1009)),
    frame_case("small-fragmented-message", Fragments(('{"type":', ' "ping"}')), PONG),
]


async def answer(
    ws: ClientConnection, timeout: float = 5.0, skip_pings: bool = True
) -> dict[str, Any] | Close:
    """The first frame that is not a heartbeat (or any frame), or how the socket closed (code
    1006 when it ended without a close frame)."""
    try:
        async with asyncio.timeout(timeout * UNIT):
            while True:
                frame = loads(await ws.recv())
                if not skip_pings or frame.get("type") != "ping":
                    return frame
    except ConnectionClosed as exc:
        if exc.rcvd is None:
            return Close(1006, None)
        return Close(exc.rcvd.code, exc.rcvd.reason)


async def send_frame(ws: ClientConnection, frame: Frame) -> None:
    if isinstance(frame, TextBytes):
        await ws.send(frame.data, text=True)
    elif isinstance(frame, Fragments):
        await ws.send(list(frame.parts))
    else:
        assert not isinstance(frame, Token)
        await ws.send(frame)


@pytest.mark.parametrize(("frame", "expect"), FRAME_CASES)
async def test_hostile_frame(
    gateway: GatewayProc, minter: TokenMinter, project_id: str, frame: Frame, expect: Expect
) -> None:
    """One hostile frame on an admitted socket gets the documented answer; unless that answer is
    a close, the socket stays open and answers a ping."""
    user = uid()
    ADMITTED.add(user)
    if isinstance(frame, Token):
        frame = frame.template.format(token=frame.make(minter, project_id, user))
    async with connect(gateway.ws(user), max_size=None) as ws:
        await send_frame(ws, frame)
        if isinstance(expect, Silent):
            # Frames are handled in order: a pong first means the frame was answered by nothing.
            await ws.send('{"type": "ping"}')
        got = await answer(ws)
        if isinstance(expect, FailedUtf8):
            assert isinstance(got, Close) and got.code in (1006, 1007), (
                f"a text frame with invalid UTF-8 got {got!r}; docs: the connection is failed"
            )
            return
        if isinstance(expect, Close):
            assert isinstance(got, Close), f"expected close {expect.code}, got {got!r}"
            assert got.code == expect.code, got
            if expect.reason is not None:
                assert got.reason == expect.reason
            return
        assert isinstance(got, dict), f"the socket closed instead of answering: {got!r}"
        if isinstance(expect, Silent):
            assert got["type"] == "pong", f"a reply where none is documented: {got!r}"
        else:
            assert got["type"] == expect.type, got
            assert datetime.fromisoformat(got["timestamp"]).tzinfo is not None
            if expect.type == "error":
                assert got["code"] == expect.code and got["message"], got
            if expect.type == "ack":
                if expect.id is ABSENT:
                    assert "id" not in got, got
                else:
                    assert got["id"] == expect.id and type(got["id"]) is type(expect.id), got
            # Still open: a ping is answered.
            await ws.send('{"type": "ping"}')
            after = await answer(ws)
            assert isinstance(after, dict) and after["type"] == "pong", after


# --- the handshake: user ids and tokens --------------------------------------------------------

MakeToken = Callable[[TokenMinter, str, str], str | None]  # (minter, project, user) -> token


def some_valid_token(m: TokenMinter, p: str, u: str) -> str:
    # A real token (for a user whose id is valid): the id check must come first.
    return m("c-token-holder")


def handshake_case(
    name: str,
    path_user: str,
    token: MakeToken | None,
    expect: Close | int,
    *,
    header: str | None = None,
    refused_as: str | None = None,
) -> Any:
    """``path_user`` goes into the URL as is (percent escapes stay escapes); ``refused_as`` is
    the id the gateway decodes it to (default: the same). ``expect``: a close, or an HTTP status
    for a handshake refused before the application runs."""
    return pytest.param(path_user, token, expect, header, refused_as, id=name)


#: Replaced by a fresh valid user id per run.
FRESH = "{fresh}"


HANDSHAKE_CASES = [
    # -- user ids (docs: accepted then closed with 4400, before any token check)
    handshake_case("uid-dotdot", "..", some_valid_token, Close(4400, "invalid user id")),
    handshake_case("uid-dot", ".", some_valid_token, Close(4400, "invalid user id")),
    handshake_case("uid-encoded-dotdot", "%2e%2e", some_valid_token, Close(4400), refused_as=".."),
    handshake_case(
        "uid-encoded-dotdot-upper-traversal",
        "%2E%2E%2Fmembers",
        some_valid_token,
        Close(4400),
        refused_as="../members",
    ),
    handshake_case("uid-encoded-slash", "a%2Fb", some_valid_token, Close(4400), refused_as="a/b"),
    handshake_case("uid-raw-slash", "a/b", some_valid_token, Close(4400)),
    handshake_case("uid-raw-traversal", "../../healthz", some_valid_token, Close(4400)),
    handshake_case("uid-dunder", "__name__", some_valid_token, Close(4400)),
    handshake_case("uid-null-byte", "a%00b", some_valid_token, Close(4400), refused_as="a\x00b"),
    handshake_case("uid-space", "a%20b", some_valid_token, Close(4400), refused_as="a b"),
    handshake_case("uid-non-ascii", "%C3%A9", some_valid_token, Close(4400), refused_as="\u00e9"),
    handshake_case("uid-semicolon", "a;b", some_valid_token, Close(4400)),
    handshake_case("uid-empty", "", some_valid_token, Close(4400)),
    handshake_case("uid-129-chars", "u" * 129, some_valid_token, Close(4400)),
    handshake_case("uid-10000-chars", "u" * 10_000, some_valid_token, Close(4400)),
    # A 1 MB request line never reaches the application: the request head's limit (16 KiB,
    # gateway.edge.handshake) answers HTTP 400.
    handshake_case("uid-1000000-chars", "u" * 1_000_000, some_valid_token, 400),
    # -- tokens (docs/protocol.md table: 4401 / 4403, nothing written)
    handshake_case("token-missing", FRESH, None, Close(4401, "missing token")),
    handshake_case(
        "token-empty-parameter", FRESH, lambda m, p, u: "", Close(4401, "missing token")
    ),
    handshake_case(
        "token-not-a-jwt", FRESH, lambda m, p, u: "not-a-jwt", Close(4401, "invalid token")
    ),
    handshake_case(
        "token-three-garbage-parts", FRESH, lambda m, p, u: "a.b.c", Close(4401, "invalid token")
    ),
    handshake_case(
        "token-alg-none-no-claims",
        FRESH,
        lambda m, p, u: "eyJhbGciOiJub25lIn0.e30.",
        Close(4401, "invalid token"),
    ),
    handshake_case(
        "token-9000-chars", FRESH, lambda m, p, u: "t" * 9000, Close(4401, "invalid token")
    ),
    # Under the request head's limit (16 KiB) the token reaches the check, over it the head
    # is answered HTTP 400 however it arrives (under h11, 100 KB gave either, by the reads).
    handshake_case(
        "token-15000-chars", FRESH, lambda m, p, u: "t" * 15_000, Close(4401, "invalid token")
    ),
    handshake_case("token-20000-chars", FRESH, lambda m, p, u: "t" * 20_000, 400),
    handshake_case("token-100000-chars", FRESH, lambda m, p, u: "t" * 100_000, 400),
    handshake_case("token-1000000-chars", FRESH, lambda m, p, u: "t" * 1_000_000, 400),
    handshake_case(
        "token-foreign-project",
        FRESH,
        lambda m, p, u: unsigned_token("demo-someone-else", u),
        Close(4401, "invalid token"),
    ),
    handshake_case(
        "token-wrong-issuer",
        FRESH,
        lambda m, p, u: unsigned_token(p, u, iss="https://evil.example"),
        Close(4401, "invalid token"),
    ),
    handshake_case(
        "token-auth-time-not-a-number",
        FRESH,
        lambda m, p, u: unsigned_token(p, u, auth_time="yesterday"),
        Close(4401, "invalid token"),
    ),
    handshake_case(
        "token-expired",
        FRESH,
        lambda m, p, u: unsigned_token(p, u, exp=int(time.time()) - 600, iat=1, auth_time=1),
        Close(4401, "token expired"),
    ),
    handshake_case(
        "token-of-another-user",
        FRESH,
        lambda m, p, u: m("other-" + u),
        Close(4403, "token is for another user"),
    ),
    handshake_case(
        "bearer-header-garbage", FRESH, None, Close(4401, "invalid token"), header="Bearer x.y.z"
    ),
    handshake_case(
        "basic-header-with-a-real-token",
        FRESH,
        None,
        Close(4401, "missing token"),
        header="Basic {token}",
    ),
]


@pytest.mark.parametrize(("path_user", "token", "expect", "header", "refused_as"), HANDSHAKE_CASES)
async def test_hostile_handshake(
    gateway: GatewayProc,
    minter: TokenMinter,
    project_id: str,
    path_user: str,
    token: MakeToken | None,
    expect: Close | int,
    header: str | None,
    refused_as: str | None,
) -> None:
    """Each refused socket is closed with the documented code (or, for a request uvicorn cannot
    parse, refused with an HTTP status); nothing is written for it (checked at the end)."""
    user = path_user.replace(FRESH, uid())
    REFUSED.add(refused_as if refused_as is not None else user)
    url = gateway.bare_ws(user)
    made = token(minter, project_id, user) if token else None
    if made is not None:
        url += f"?token={made}"
    headers = {"Authorization": header.format(token=minter(uid()))} if header else None
    if isinstance(expect, int):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == expect
        return
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        got = await answer(ws, timeout=10, skip_pings=False)
    assert isinstance(got, Close), f"the socket was admitted: {got!r}"
    assert got.code == expect.code, got
    if expect.reason is not None:
        assert got.reason == expect.reason, got


# --- REST and the internal callback ------------------------------------------------------------

CALLBACK_BODY = json.dumps(
    {
        "reason": "inactivity",
        "signed_out_at": "2026-01-01T12:00:00+00:00",
        "sessions": [{"user_id": "c-victim", "session_id": "0" * 32}],
    }
)


def rest_case(
    name: str,
    method: str,
    path: str,
    credential: str | bytes | None,
    body: str | bytes | None,
    status: int,
    bug: str = "",
) -> Any:
    """``credential``: "admin", "callback", None (no header), or a literal header value."""
    return pytest.param(method, path, credential, body, status, bug, id=name)


DEEP_BODY = '{"a": ' + nested(2000) + "}"
DEEP_CALLBACK = '{"sessions": [], "x": ' + nested(2000) + "}"
CALLBACK, BROADCAST, SEND = "/internal/timeout", "/ws/broadcast", "/ws/send/c-victim"
BUG_DEEP = "a deeply nested JSON body must answer 400 (RecursionError in the body decoder)"
BUG_UTF8 = "a body that is not UTF-8 must answer 400 (UnicodeDecodeError in the body decoder)"

REST_CASES = [
    # -- forged internal callbacks (docs: only the callback token works here)
    rest_case("callback-no-token", "POST", CALLBACK, None, CALLBACK_BODY, 401),
    rest_case("callback-admin-token", "POST", CALLBACK, "admin", CALLBACK_BODY, 401),
    rest_case("callback-wrong-token", "POST", CALLBACK, "Bearer " + "w" * 40, CALLBACK_BODY, 401),
    rest_case(
        "callback-token-prefix",
        "POST",
        CALLBACK,
        "Bearer " + CALLBACK_TOKEN[:-1],
        CALLBACK_BODY,
        401,
    ),
    rest_case(
        "callback-token-extended",
        "POST",
        CALLBACK,
        "Bearer " + CALLBACK_TOKEN + "x",
        CALLBACK_BODY,
        401,
    ),
    rest_case(
        "callback-token-as-basic", "POST", CALLBACK, "Basic " + CALLBACK_TOKEN, CALLBACK_BODY, 401
    ),
    rest_case("callback-bare-bearer", "POST", CALLBACK, "Bearer", CALLBACK_BODY, 401),
    # GATEWAY_CALLBACK_TOKEN may list several tokens; a client presents one, not a list.
    rest_case(
        "callback-token-in-a-comma-list",
        "POST",
        CALLBACK,
        f"Bearer {'w' * 20},{CALLBACK_TOKEN}",
        CALLBACK_BODY,
        401,
    ),
    rest_case(
        "callback-non-ascii-header", "POST", CALLBACK, b"Bearer \xe9\xff", CALLBACK_BODY, 401
    ),
    # -- callback bodies with the right token
    rest_case("callback-body-array", "POST", CALLBACK, "callback", "[]", 400),
    rest_case("callback-body-not-json", "POST", CALLBACK, "callback", "{oops", 400),
    rest_case("callback-body-no-sessions", "POST", CALLBACK, "callback", "{}", 400),
    rest_case(
        "callback-body-sessions-string", "POST", CALLBACK, "callback", '{"sessions": "all"}', 400
    ),
    rest_case(
        "callback-body-session-ids-wrong-type",
        "POST",
        CALLBACK,
        "callback",
        '{"sessions": [{"user_id": 1, "session_id": null}]}',
        400,
    ),
    rest_case(
        "callback-body-oversized",
        "POST",
        CALLBACK,
        "callback",
        json.dumps({"sessions": [{"user_id": "u", "session_id": "s"}] * 200}),
        413,
    ),
    rest_case(
        "callback-body-deeply-nested", "POST", CALLBACK, "callback", DEEP_CALLBACK, 400, BUG_DEEP
    ),
    # -- admin REST with the wrong credentials
    rest_case("stats-no-token", "GET", "/ws/stats", None, None, 401),
    rest_case("stats-wrong-token", "GET", "/ws/stats", "Bearer " + "w" * 40, None, 401),
    rest_case("stats-callback-token", "GET", "/ws/stats", "Bearer " + CALLBACK_TOKEN, None, 401),
    rest_case("status-basic-scheme", "GET", "/ws/status/u", "Basic admin:admin", None, 401),
    rest_case("broadcast-wrong-token", "POST", BROADCAST, "Bearer nope", '{"type": "x"}', 401),
    rest_case("send-no-token", "POST", SEND, None, '{"type": "x"}', 401),
    # -- bodies that are not JSON objects (docs: 400), or too large (413)
    rest_case("broadcast-body-array", "POST", BROADCAST, "admin", "[1, 2]", 400),
    rest_case("broadcast-body-string", "POST", BROADCAST, "admin", '"text"', 400),
    rest_case("broadcast-body-number", "POST", BROADCAST, "admin", "1", 400),
    rest_case("broadcast-body-null", "POST", BROADCAST, "admin", "null", 400),
    rest_case("broadcast-body-boolean", "POST", BROADCAST, "admin", "true", 400),
    rest_case("broadcast-body-empty", "POST", BROADCAST, "admin", "", 400),
    rest_case("broadcast-body-whitespace", "POST", BROADCAST, "admin", "   ", 400),
    rest_case("broadcast-body-not-json", "POST", BROADCAST, "admin", "{oops", 400),
    rest_case("broadcast-body-nan", "POST", BROADCAST, "admin", '{"a": NaN}', 400),
    rest_case("broadcast-body-1e400", "POST", BROADCAST, "admin", '{"a": 1e400}', 400),
    rest_case("broadcast-body-lone-surrogate", "POST", BROADCAST, "admin", '{"a": "\\ud800"}', 400),
    rest_case(
        "broadcast-body-invalid-utf8", "POST", BROADCAST, "admin", b'{"a": "\xff"}', 400, BUG_UTF8
    ),
    rest_case("broadcast-body-deeply-nested", "POST", BROADCAST, "admin", DEEP_BODY, 400, BUG_DEEP),
    rest_case("send-body-array", "POST", SEND, "admin", "[1]", 400),
    rest_case("send-body-not-json", "POST", SEND, "admin", "nope", 400),
    rest_case("send-body-invalid-utf8", "POST", SEND, "admin", b'{"type": "\xff"}', 400, BUG_UTF8),
    rest_case("broadcast-body-oversized", "POST", BROADCAST, "admin", "x" * 5000, 413),
    rest_case(
        "broadcast-body-oversized-object",
        "POST",
        BROADCAST,
        "admin",
        json.dumps({"type": "x", "data": "x" * 5000}),
        413,
    ),
    rest_case(
        "send-body-oversized",
        "POST",
        SEND,
        "admin",
        json.dumps({"type": "x", "data": "x" * 5000}),
        413,
    ),
]


def authorization(gateway: GatewayProc, credential: str | bytes | None) -> dict[str, Any]:
    if credential is None:
        return {}
    if isinstance(credential, bytes):
        return {"Authorization": credential}
    value = {"admin": f"Bearer {gateway.token}", "callback": f"Bearer {CALLBACK_TOKEN}"}.get(
        credential, credential
    )
    return {"Authorization": value}


@pytest.mark.parametrize(("method", "path", "credential", "body", "status", "bug"), REST_CASES)
async def test_hostile_rest_call(
    gateway: GatewayProc,
    method: str,
    path: str,
    credential: str | bytes | None,
    body: str | bytes | None,
    status: int,
    bug: str,
) -> None:
    """Forged callbacks and admin calls get 401, bad bodies 400, big bodies 413, each with the
    documented error body."""
    headers = {"Content-Type": "application/json", **authorization(gateway, credential)}
    async with httpx.AsyncClient(base_url=gateway.http, timeout=10 * UNIT) as http:
        response = await http.request(method, path, content=body, headers=headers)
    assert response.status_code == status, (
        f"{bug or 'unexpected status'}: got {response.status_code} {response.text[:200]}"
    )
    body_json = response.json()
    assert body_json["status"] == "error" and body_json["status_code"] == status
    assert isinstance(body_json["message"], str) and body_json["message"]


# --- floods, slow clients, forged callbacks at a live socket -----------------------------------


async def test_a_flood_is_closed_with_4429(gateway: GatewayProc) -> None:
    """Far beyond WS_MAX_MESSAGES_PER_SECOND (20, bursts of 40): close 4429 too many messages."""
    user = uid()
    ADMITTED.add(user)
    async with connect(gateway.ws(user)) as ws:
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(10 * UNIT):
                for _ in range(400):
                    await ws.send('{"type": "pong"}')
                while True:
                    await ws.recv()
    assert caught.value.rcvd is not None
    assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (4429, "too many messages")


async def test_a_slow_handshake_does_not_hold_up_anyone(
    gateway: GatewayProc, bystander: Bystander
) -> None:
    """Half an upgrade request, then silence (and a second one dripping a byte at a time): while
    they hang, the bystander keeps getting pings and a new socket is admitted and answered.

    Observed: uvicorn has no handshake timeout, so such connections stay open as long as the
    client likes (the docs promise none; a front end such as Cloud Run's bounds them)."""
    half = (
        b"GET /ws/connect/c-slow HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Ver"
    )
    hung = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(2)]
    hung[0][1].write(half)
    await hung[0][1].drain()
    try:
        seen = len(bystander.ping_stamps)
        user = uid()
        ADMITTED.add(user)
        async with connect(gateway.ws(user)) as ws:
            for byte in half[:12]:
                hung[1][1].write(bytes([byte]))
                await hung[1][1].drain()
                await ws.send('{"type": "ping"}')
                got = await answer(ws)
                assert isinstance(got, dict) and got["type"] == "pong", got
                await asyncio.sleep(0.05)

        async def bystander_pinged() -> bool:
            return len(bystander.ping_stamps) >= seen + 3

        await eventually(bystander_pinged, timeout=5)
        # The hung handshakes were not upgraded (nothing answered, or at most a refusal).
        for reader, _ in hung:
            try:
                data = await asyncio.wait_for(reader.read(200), 0.3)
            except TimeoutError:
                data = b""
            assert not data.startswith(b"HTTP/1.1 101"), data
    finally:
        for _, writer in hung:
            writer.close()


async def test_a_forged_callback_cannot_close_a_live_session(
    gateway: GatewayProc, firestore_client: Any
) -> None:
    """An attacker who knows a victim's real session id still cannot time it out without the
    callback token: 401 for no token and for the admin token, and the socket stays open."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    victim = uid()
    ADMITTED.add(victim)
    async with connect(gateway.ws(victim)) as ws:

        async def session_id() -> str:
            query = firestore_client.collection(SESSIONS).where(
                filter=FieldFilter(USER_ID, "==", victim)
            )
            found = [doc.id for doc in query.stream()]
            return found[0] if found else ""

        session = await eventually(session_id)
        body = {"reason": "inactivity", "sessions": [{"user_id": victim, "session_id": session}]}
        async with httpx.AsyncClient(base_url=gateway.http, timeout=10 * UNIT) as http:
            for headers in ({}, gateway.auth, {"Authorization": "Bearer " + "x" * 32}):
                response = await http.post("/internal/timeout", json=body, headers=headers)
                assert response.status_code == 401, response.text
        await ws.send('{"type": "ping"}')
        got = await answer(ws)
        assert isinstance(got, dict) and got["type"] == "pong", got


# --- after the corpus ------------------------------------------------------------------------

MEMBER_FIELDS: dict[str, type | tuple[type, ...]] = {
    IS_SIGNED_IN: bool,
    LAST_PONG_AT: datetime,
    UPDATED_AT: datetime,
    LAST_CONNECTED_AT: datetime,
    LAST_SIGN_OUT_AT: datetime,
    INSTANCE_ID: str,
    ACTIVE_SESSIONS: dict,
    SHARD: int,
    # The sweep's transient claim (docs/operations.md, Firestore data).
    SIGN_OUT_CLAIM: str,
    SIGN_OUT_CLAIMED_AT: datetime,
}
SESSION_FIELDS: dict[str, type | tuple[type, ...]] = {
    USER_ID: str,
    IS_ACTIVE: bool,
    CONNECTED_AT: datetime,
    INSTANCE_ID: str,
    DISCONNECTED_AT: datetime,
    CLOSE_CODE: (int, type(None)),
    SIGNED_OUT_AT: datetime,
}


def wrong_type(value: Any, expected: type | tuple[type, ...]) -> bool:
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in allowed:
        return True  # bool is an int subclass; True is no close code
    return not isinstance(value, allowed)


def type_problems(doc_id: str, record: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    problems = [
        f"{doc_id}.{name}={value!r:.80}"
        for name, value in record.items()
        if name in spec and wrong_type(value, spec[name])
    ]
    if INTERNAL_URL in record:
        problems.append(f"{doc_id}.internal_url (an instance's address, for no client)")
    for session, where in (record.get(ACTIVE_SESSIONS) or {}).items():
        # Exactly the instance: the user may read their member, and an internal URL here
        # would tell them a gateway's address.
        if not (
            isinstance(where, dict)
            and set(where) == ACTIVE_SESSION_FIELDS
            and isinstance(where.get(INSTANCE_ID), str)
        ):
            problems.append(f"{doc_id}.active_sessions.{session}={where!r}")
    return problems


async def test_the_gateway_survived_the_corpus(
    gateway: GatewayProc, bystander: Bystander, firestore_client: Any
) -> None:
    """Runs last: the process is alive and healthy, the bystander opened before the corpus
    still gets pings and the ping loop never stalled, no socket handler crashed, and Firestore
    holds no corrupt member or session and nothing for any refused user id."""
    assert gateway.process.popen is not None and gateway.process.popen.poll() is None
    async with httpx.AsyncClient(base_url=gateway.http, timeout=10 * UNIT) as http:
        assert (await http.get("/healthz")).json()["status"] == "ok"
        stats = (await http.get("/ws/stats", headers=gateway.auth)).json()
    assert bystander.user in stats["connected_users"]

    seen = len(bystander.ping_stamps)

    async def fresh_pings() -> bool:
        return len(bystander.ping_stamps) >= seen + 2

    await eventually(fresh_pings, timeout=5)
    assert bystander.task is not None and not bystander.task.done()
    stamps = bystander.ping_stamps
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(stamps)]
    assert max(gaps) < 3 * UNIT, f"the ping loop stalled for {max(gaps):.2f}s during the corpus"

    log = gateway.log()
    assert "socket handler failed" not in log, "a socket handler crashed (close 1011)"
    async with httpx.AsyncClient(base_url=gateway.http, timeout=10 * UNIT) as http:
        metrics = (await http.get("/metrics")).text.splitlines()
    # Nothing the corpus sent reached Firestore as a write it refuses, and no commit failed.
    assert "gateway_firestore_commit_failures_total 0.0" in metrics
    assert "gateway_writes_rejected_total 0.0" in metrics

    await asyncio.sleep(1 * UNIT)  # write-behind flushes (PONG_FLUSH_INTERVAL=0.2)
    problems: list[str] = []
    member_ids = set()
    for snapshot in firestore_client.collection(MEMBERS).stream():
        member_ids.add(snapshot.id)
        record = snapshot.to_dict()
        if not valid_user_id(snapshot.id):
            problems.append(f"members/{snapshot.id[:80]!r}: not a valid user id")
        problems += type_problems(f"members/{snapshot.id}", record, MEMBER_FIELDS)
        if snapshot.id in ADMITTED:
            unknown = set(record) - set(MEMBER_FIELDS)
            if unknown:
                problems.append(f"members/{snapshot.id}: undocumented fields {sorted(unknown)}")
            if not isinstance(record.get(IS_SIGNED_IN), bool):
                problems.append(f"members/{snapshot.id}: no is_signed_in")
    for snapshot in firestore_client.collection(SESSIONS).stream():
        record = snapshot.to_dict()
        user = record.get(USER_ID)
        if user in REFUSED:
            problems.append(f"sessions/{snapshot.id}: a session for refused user {user[:80]!r}")
        elif not (isinstance(user, str) and valid_user_id(user)):
            problems.append(f"sessions/{snapshot.id}: user_id {user!r:.80}")
        problems += type_problems(f"sessions/{snapshot.id}", record, SESSION_FIELDS)
    problems += [f"members/{user[:80]!r} exists for a refused id" for user in REFUSED & member_ids]
    missing = ADMITTED - member_ids
    assert not missing, f"admitted users without a member document: {sorted(missing)[:5]}"
    assert not problems, "\n".join(problems[:30])
