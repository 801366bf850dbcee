"""The plain targeted send answered inside the HTTP protocol: no ASGI task, one write.

``POST /ws/send/{user}`` skips Litestar already (``gateway.web.fast_send``), but through ASGI
it still costs a task, an event, a ``receive`` and two ``send`` calls, each a transport write,
which together were most of what a send cost (docs/benchmarks.md, REST delivery). Here, when a
request's head is one ``FastSend.takes``, uvicorn's request-response cycle is made as usual but
its task is held back until the body is complete; then, if the send can be decided without an
await (the user's sockets all here, and nothing says another instance holds the user:
``gateway.cluster.local_send``), the message is delivered and the whole response written at
once, status line, uvicorn's own headers (``date``, ``server``) and body, as uvicorn writes the
ASGI path's answer. Everything else starts the held task unchanged, with the body already in
the cycle: a send that needs a read, a publish or receipts; a body so large it pauses reading;
a response whose client is not reading; ``Expect: 100-continue``; a request without
keep-alive; a request queued behind another (pipelining: it runs in turn, the ordinary way);
and every request while uvicorn's access log is on (its line names the forwarded client).
"""

from __future__ import annotations

from typing import Any, Protocol

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from gateway.edge.handshake import BoundedHttpToolsProtocol, HandshakeLimits


class Answers(Protocol):
    """What answers inline (``gateway.web.fast_send.FastSend``)."""

    def takes(self, scope: Any) -> bool: ...

    def answer_now(self, scope: Any, body: bytes) -> tuple[int, bytes] | None: ...


class InlineSendProtocol(BoundedHttpToolsProtocol):
    """The bounded httptools protocol, answering ``answers``' requests itself when it can."""

    answers: Answers  # set by ``inline_http``
    #: While uvicorn handles a request head (its task may be held back then).
    _heading = False
    #: The cycle and app of a request whose task waits for its whole body.
    _held: tuple[RequestResponseCycle, ASGI3Application] | None = None

    def on_message_begin(self) -> None:
        # A response written inside the parser arms the keep-alive clock; a request pipelined
        # behind it in the same read is no idle time.
        self._idle_since = None
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._heading = True
        try:
            super().on_headers_complete()
        finally:
            self._heading = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if (
            self._heading
            and app is self.app  # not uvicorn's 503 for limit_concurrency
            and cycle.keep_alive
            and not self.expect_100_continue
            and not self.access_log
            and self.answers.takes(cycle.scope)
        ):
            self._held = (cycle, app)
            return
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._held is not None and self.flow.read_paused:
            # Only the task's receive resumes reading: it must run now.
            cycle, app = self._held
            self._held = None
            super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._held is None:
            return
        cycle, app = self._held
        self._held = None
        answer = None
        if cycle.keep_alive and not self.flow.write_paused and not self.transport.is_closing():
            answer = self.answers.answer_now(cycle.scope, bytes(cycle.body))
        if answer is None:
            super()._start_asgi_task(cycle, app)
            return
        status, body = answer
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend((name.lower(), b": ", value, b"\r\n"))
        content.append(b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
        content.append(body)
        self.transport.write(b"".join(content))
        cycle.body = bytearray()
        cycle.response_started = cycle.response_complete = True
        self.on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._held = None
        super().connection_lost(exc)


def inline_http(timeout: float, max_pending: int, answers: Answers) -> type[InlineSendProtocol]:
    """The protocol class to give uvicorn as ``http=``: ``bounded_http``'s, answering
    ``answers``' requests inline."""
    limits = HandshakeLimits(timeout, max_pending)
    return type("InlineSendProtocol", (InlineSendProtocol,), {"limits": limits, "answers": answers})
