"""The plain send answered inside the HTTP protocol (gateway.edge.inline_send), on a transport
without a socket: the inline answer is the bytes uvicorn writes for the same answer through
ASGI, pipelined requests are answered in order, a body in pieces is waited for, and whatever
cannot be answered inline reaches the application with its whole body. Real sockets and the
real send: tests/e2e/test_fast_send.py."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.edge.inline_send import InlineSendProtocol, inline_http
from tests.unit.test_handshake import Transport

DEFAULT_HEADERS = [(b"date", b"Mon, 07 Dec 2026 18:00:00 GMT"), (b"server", b"uvicorn")]


class Answers:
    """Takes ``POST /ws/send/...``; answers inline a body without ``"await"`` (none when
    ``never``), echoing it."""

    def __init__(self, never: bool = False) -> None:
        self.inline: list[bytes] = []
        self.never = never

    def takes(self, scope: Any) -> bool:
        return bool(scope["method"] == "POST" and scope["path"].startswith("/ws/send/"))

    def answer_now(self, scope: Any, body: bytes) -> tuple[int, bytes] | None:
        if self.never or b"await" in body:
            return None
        self.inline.append(body)
        return 200, b"echo " + body


class App:
    """The ASGI application: answers as FastSend does (same headers), echoing the body, after
    ``delay`` seconds."""

    def __init__(self, delay: float = 0) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.delay = delay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append((scope["path"], body))
        await asyncio.sleep(self.delay)
        answer = b"echo " + body
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def post(body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST /ws/send/u HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


def connect(app: App, answers: Answers, keep_alive: float = 5) -> tuple[Any, Transport]:
    protocol_class = inline_http(10, 10, answers)
    config = Config(
        app=app,
        http=protocol_class,
        lifespan="off",
        log_config=None,
        access_log=False,  # as gateway.serving runs it (an access log line goes the ASGI way)
        timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
    )
    state = ServerState()
    state.default_headers = list(DEFAULT_HEADERS)
    protocol = protocol_class(config, state, {})
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_inline_answer_is_the_bytes_uvicorn_writes_for_it_through_asgi() -> None:
    """The same answer, given inline and by the application through uvicorn's cycle, is the
    same bytes on the wire (status line, date and server, content type and length, body)."""
    app, answers = App(), Answers()
    inline, inline_wire = connect(app, answers)
    asgi, asgi_wire = connect(app, Answers(never=True))
    for protocol in (inline, asgi):
        protocol.data_received(post(b'{"a":1}'))
    await settle()
    assert answers.inline == [b'{"a":1}'] and app.seen == [("/ws/send/u", b'{"a":1}')]
    assert inline_wire.written == asgi_wire.written
    assert inline_wire.written.startswith(b"HTTP/1.1 200 OK\r\ndate: Mon, 07 Dec")
    assert not inline_wire.closed and isinstance(inline, InlineSendProtocol)


async def test_pipelined_requests_are_answered_in_the_order_they_came() -> None:
    """An inline send, one for the application, and another send in one read: three answers
    in request order; the third, queued behind the application's, runs in its turn the
    ordinary way."""
    app, answers = App(delay=0.01), Answers()
    protocol, transport = connect(app, answers)
    protocol.data_received(post(b"1") + post(b"2 await") + post(b"3"))
    await asyncio.sleep(0.05)
    bodies = [part.split(b"\r\n\r\n")[-1] for part in transport.written.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"echo 1", b"echo 2 await", b"echo 3"]
    assert answers.inline == [b"1"]
    assert app.seen == [("/ws/send/u", b"2 await"), ("/ws/send/u", b"3")]


async def test_a_body_in_pieces_is_waited_for_and_answered_inline() -> None:
    """A head, then its body a few bytes at a time: one inline answer once it is whole."""
    app, answers = App(), Answers()
    protocol, transport = connect(app, answers)
    data = post(b'{"split": "over several reads"}')
    for start in range(0, len(data), 7):
        assert not transport.written
        protocol.data_received(data[start : start + 7])
    await settle()
    assert answers.inline == [b'{"split": "over several reads"}'] and app.seen == []
    assert transport.written.endswith(b'echo {"split": "over several reads"}')


async def test_requests_that_cannot_be_answered_inline_reach_the_application_whole() -> None:
    """Expect: 100-continue, Connection: close, another route, and a send that needs an
    await all go to the application, each with its whole body."""
    for data, path in (
        (post(b"x", b"Expect: 100-continue\r\n"), "/ws/send/u"),
        (post(b"x", b"Connection: close\r\n"), "/ws/send/u"),
        (post(b"x").replace(b"/ws/send/u", b"/other"), "/other"),
        (post(b"x await"), "/ws/send/u"),
    ):
        app, answers = App(), Answers()
        protocol, _ = connect(app, answers)
        protocol.data_received(data)
        await settle()
        assert answers.inline == [] and app.seen == [(path, data.split(b"\r\n\r\n")[1])], data


async def test_a_request_pipelined_behind_an_inline_answer_is_not_idle_time() -> None:
    """The keep-alive clock armed by an inline answer does not close the connection while the
    request read right behind it is still being answered."""
    app, answers = App(delay=0.15), Answers()
    protocol, transport = connect(app, answers, keep_alive=0.1)
    protocol.data_received(post(b"1") + post(b"2 await"))
    await asyncio.sleep(0.2)
    assert transport.written.endswith(b"echo 2 await") and not transport.closed
    await asyncio.sleep(0.15)
    assert transport.closed  # idle after its answer: the keep-alive timeout holds
