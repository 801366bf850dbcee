"""Load client for the gateway benchmarks, run as its own process.

    python -m tests.bench.load_client --port 8000 --count 10000 --mode idle

Opens ``--count`` sockets to ``ws://127.0.0.{k}:PORT/ws/connect/{user_id}`` (``k`` cycles over
``--hosts`` loopback addresses so no single address pair runs out of ephemeral ports), one
distinct user id per socket. The source address is 127.0.0.1 for all of them unless
``--bind-source`` binds each to the address it connects to. In ``pong`` mode every server
``{"type":"ping"}`` is answered with ``{"type":"pong"}``; in ``idle`` mode frames are read and
discarded. In ``timeout`` mode sockets are idle too and each records the wall-clock time of
every ``{"type":"timeout"}`` frame and of the server's close frame (with its code);
``--plan FILE`` (a JSON list of ``[port, user_id]``) then names each socket's gateway and user,
so one process can hold a user's sockets on several gateway instances. In ``fanout`` mode
sockets answer pings like ``pong`` mode, except one in ``--silent-every`` (by user number),
which never answers; every socket also records the timeout frame and close frame as in
``timeout`` mode and the wall-clock arrival of each ``{"type":"bench"}`` frame: one carrying
``n`` (a send) as ``[n, user_id, time]``, one carrying ``b`` (a broadcast) as a count and the
first and last arrival per ``b``.

Two implementations:

* ``raw`` (default): one ``asyncio.Protocol`` per socket with a hand-written RFC 6455 client
  (handshake, unfragmented frames, close). No task, no queue and no buffer per socket, so 10,000
  sockets cost a few KB each and answering 5,000 pings/s takes a small fraction of a core,
  leaving the CPU to the gateway.
* ``websockets``: ``websockets.asyncio.client.connect`` (compression off, no keepalive pings,
  small queue) and one reader task per socket; heavier, useful to cross-check ``raw``.

Talks to its parent in JSON lines: stdout carries events (``progress``, ``ready``, ``stats``,
``stopped``, ``report``, ``fanout``); stdin takes commands (``stats``, ``report``: the timeout
records so far, ``fanout``: the bench frames received since the last ``fanout`` and every
broadcast's tally, ``stop``; EOF means stop).

In ``storm`` mode (a reconnect storm, ``tests/bench/storm_bench.py``) the ``--plan`` entries
carry a third element, the user's ID token, sent as ``?token=``; every socket is opened at once,
without a concurrency limit (``--burst`` connects started per loop iteration, so that each
socket sends its request as soon as it is connected, as independent clients would) and only
once (``--attempts 1``: a refusal must show, not be retried away). Each records, on this
process's monotonic clock, when its connect started, when the upgrade was answered, when its
first ping arrived and the close code of a refusal. Sockets answer pings like ``pong`` mode;
``ready`` comes once every socket has its first ping or is closed (``--ping-wait`` at most) and
``report`` returns the records.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PONG_TEXT = b'{"type":"pong"}'

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame (clients must mask); payloads here are always < 126 bytes."""
    if len(payload) > 125:
        raise ValueError("control-sized payloads only")
    mask = os.urandom(4)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


def close_payload(code: int) -> bytes:
    return code.to_bytes(2, "big")


class Stats:
    """Counters shared by every socket of this process."""

    def __init__(self) -> None:
        self.open = 0
        self.connected = 0
        self.failed = 0
        self.retries = 0
        self.pings = 0
        self.pongs_sent = 0
        self.other_frames = 0
        self.closed_by_server = 0
        self.lost = 0
        self.last_error = ""

    def as_dict(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "open": self.open,
            "connected": self.connected,
            "failed": self.failed,
            "retries": self.retries,
            "pings": self.pings,
            "pongs_sent": self.pongs_sent,
            "other_frames": self.other_frames,
            "closed_by_server": self.closed_by_server,
            "lost": self.lost,
            "last_error": self.last_error,
            "rss_kb": _rss_kb(),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        }


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except OSError:
        return 0


# --- raw protocol ------------------------------------------------------------------------------


class RawSocket(asyncio.Protocol):
    """One client socket; state is a handful of slots."""

    __slots__ = (
        "transport",
        "buf",
        "upgraded",
        "ready",
        "stats",
        "pong",
        "closing",
        "accept",
        "_request",
        "last_pong",
    )

    # One pre-masked pong frame shared by all sockets (the mask need not be unpredictable for a
    # benchmark on loopback; the server unmasks it all the same).
    PONG_FRAME = masked_frame(OP_TEXT, PONG_TEXT)

    def __init__(self, request: bytes, accept: bytes, stats: Stats, pong: bool) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.ready: asyncio.Future[None] | None = asyncio.get_running_loop().create_future()
        self.stats = stats
        self.pong = pong
        self.closing = False
        self.accept = accept
        self._request = request
        self.last_pong = 0.0  # wall-clock time of the last pong sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)
        del self._request

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 8192:
                    self._fail("handshake response too long")
                else:
                    self.buf = buf
                return
            head, buf = buf[:end], buf[end + 4 :]
            status = head.split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                self._fail(f"handshake refused: {status.decode(errors='replace')[:80]}")
                return
            if self.accept not in head:
                self._fail("bad Sec-WebSocket-Accept")
                return
            self.upgraded = True
            self.accept = b""
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(None)
            self.ready = None
        self.buf = self._frames(buf)

    def _frames(self, buf: bytes) -> bytes:
        transport = self.transport
        assert transport is not None
        while True:
            size = len(buf)
            if size < 2:
                return buf
            b0, b1 = buf[0], buf[1]
            length = b1 & 0x7F
            offset = 2
            if length == 126:
                if size < 4:
                    return buf
                length = int.from_bytes(buf[2:4], "big")
                offset = 4
            elif length == 127:
                if size < 10:
                    return buf
                length = int.from_bytes(buf[2:10], "big")
                offset = 10
            if b1 & 0x80:  # servers must not mask; tolerate it anyway
                offset += 4
            if size < offset + length:
                return buf
            payload = buf[offset : offset + length]
            if b1 & 0x80:
                mask = buf[offset - 4 : offset]
                payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
            buf = buf[offset + length :]
            opcode = b0 & 0x0F
            if opcode == OP_TEXT:
                if b'"type":"ping"' in payload[:32]:
                    self.stats.pings += 1
                    if self.pong and not self.closing:
                        transport.write(self.PONG_FRAME)
                        self.last_pong = time.time()
                        self.stats.pongs_sent += 1
                else:
                    self.on_text(payload)
            elif opcode == OP_PING:
                transport.write(masked_frame(OP_PONG, payload[:125]))
            elif opcode == OP_CLOSE:
                self.on_close(payload)
                if not self.closing:
                    self.closing = True
                    self.stats.closed_by_server += 1
                    code = payload[:2] if len(payload) >= 2 else b""
                    transport.write(masked_frame(OP_CLOSE, code))
                transport.close()
                return b""
            else:
                self.stats.other_frames += 1

    def on_text(self, payload: bytes) -> None:
        """A text frame other than a ping (a hook: TimeoutSocket records timeouts)."""
        self.stats.other_frames += 1

    def on_close(self, payload: bytes) -> None:
        """The server's close frame arrived (a hook: TimeoutSocket records its code)."""

    def _fail(self, reason: str) -> None:
        self.stats.last_error = reason
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(f"lost before upgrade: {exc!r}"))
            self.ready = None
            return
        if self.upgraded:
            self.stats.open -= 1
            if not self.closing:
                self.stats.lost += 1
        self.transport = None
        if _pool_done is not None:
            _pool_done(self)

    def close(self) -> None:
        """Start the closing handshake (1000); the server answers and drops the connection."""
        if self.transport is None:
            return
        if not self.closing:
            self.closing = True
            self.transport.write(masked_frame(OP_CLOSE, close_payload(1000)))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class TimeoutSocket(RawSocket):
    """A socket that records when the gateway's timeout message and close frame arrive.

    A subclass, so the slots cost nothing to the memory and pong scenarios' sockets."""

    __slots__ = ("user_id", "port", "timeouts", "timeout_at", "close_code", "close_at")

    TIMEOUT_MARK = b'"type":"timeout"'

    def __init__(
        self, request: bytes, accept: bytes, stats: Stats, user_id: str, port: int
    ) -> None:
        super().__init__(request, accept, stats, pong=False)
        self.user_id = user_id
        self.port = port
        self.timeouts = 0
        self.timeout_at = 0.0  # wall clock, to compare with Firestore's commit timestamps
        self.close_code: int | None = None
        self.close_at = 0.0

    def on_text(self, payload: bytes) -> None:
        # Stamp before anything else: the receipt time is the figure being measured.
        now = time.time()
        if self.TIMEOUT_MARK in payload[:40]:
            self.timeouts += 1
            if not self.timeout_at:
                self.timeout_at = now
        else:
            self.stats.other_frames += 1

    def on_close(self, payload: bytes) -> None:
        if self.close_code is None:
            self.close_at = time.time()
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005

    def record(self) -> list[Any]:
        return [
            self.user_id,
            self.port,
            self.timeouts,
            self.timeout_at or None,
            self.close_code,
            self.close_at or None,
        ]


class FanoutLog:
    """The bench frames the ``fanout`` sockets of this process received."""

    def __init__(self) -> None:
        #: [n, user_id, wall-clock arrival] per send frame, since the last drain.
        self.sends: list[list[Any]] = []
        #: broadcast id -> [sockets reached, first arrival, last arrival].
        self.broadcasts: dict[int, list[Any]] = {}

    def drain(self) -> list[list[Any]]:
        sends, self.sends = self.sends, []
        return sends


class FanoutSocket(TimeoutSocket):
    """A socket of the fan-out scenario: answers pings unless silent, records bench frames
    (and, as a TimeoutSocket, the timeout and close frames)."""

    __slots__ = ("log",)

    BENCH_MARK = b'"type":"bench"'

    def __init__(
        self,
        request: bytes,
        accept: bytes,
        stats: Stats,
        user_id: str,
        port: int,
        silent: bool,
        log: FanoutLog,
    ) -> None:
        super().__init__(request, accept, stats, user_id, port)
        self.pong = not silent
        self.log = log

    def on_text(self, payload: bytes) -> None:
        now = time.time()
        if self.BENCH_MARK not in payload[:40]:
            super().on_text(payload)
            return
        frame = json.loads(payload)
        if "n" in frame:
            self.log.sends.append([frame["n"], self.user_id, now])
            return
        tally = self.log.broadcasts.get(frame["b"])
        if tally is None:
            self.log.broadcasts[frame["b"]] = [1, now, now]
        else:
            tally[0] += 1
            tally[2] = now


class StormSocket(RawSocket):
    """A socket of the reconnect storm: stamps its upgrade and its first ping, and the close
    code when the server closes it first (a refusal)."""

    __slots__ = ("started", "upgraded_at", "pinged_at", "close_code", "settled")

    PING_MARK = b'"type":"ping"'

    def __init__(self, request: bytes, accept: bytes, stats: Stats, started: float) -> None:
        super().__init__(request, accept, stats, pong=True)
        self.started = started
        self.upgraded_at = 0.0
        self.pinged_at = 0.0
        self.close_code: int | None = None
        #: Done at the first ping, or when the socket closes without one.
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        # Stamped before parsing: the receipt is the figure. Server frames are not masked, so
        # the ping's JSON is visible in the raw bytes (the 101 response may share the read).
        now = time.monotonic()
        if not self.upgraded:
            self.upgraded_at = now
        if not self.pinged_at and self.PING_MARK in data:
            self.pinged_at = now
            if not self.settled.done():
                self.settled.set_result(None)
        super().data_received(data)

    def on_close(self, payload: bytes) -> None:
        if self.close_code is None and not self.pinged_at:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        if not self.settled.done():
            self.settled.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.settled.done():
            self.settled.set_result(None)
        super().connection_lost(exc)

    def record(self) -> list[Any]:
        """[started, upgraded at, first ping at, close code]: monotonic seconds, 0 for never."""
        return [self.started, self.upgraded_at, self.pinged_at, self.close_code]


_pool_done: Callable[[RawSocket], None] | None = None


def handshake(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, accept


def target(args: argparse.Namespace, index: int) -> tuple[int, str, str | None]:
    """(port, user id, ID token or None) of socket ``index``: from ``--plan``, else ``--port``
    and a numbered id."""
    if args.plan_entries is not None:
        port, user_id, *token = args.plan_entries[index]
        return int(port), str(user_id), str(token[0]) if token else None
    return args.port, f"{args.prefix}-{args.first_id + index:06d}", None


class RawPool:
    def __init__(self, args: argparse.Namespace, stats: Stats) -> None:
        self.args = args
        self.stats = stats
        self.sockets: set[RawSocket] = set()
        #: Every TimeoutSocket that connected and every StormSocket, kept after it closes (its
        #: record is the result).
        self.tracked: list[TimeoutSocket | StormSocket] = []
        self.fanout_log = FanoutLog()
        self.all_gone = asyncio.Event()
        global _pool_done
        _pool_done = self._gone

    def _gone(self, sock: RawSocket) -> None:
        self.sockets.discard(sock)
        if not self.sockets:
            self.all_gone.set()

    async def open_one(self, index: int) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        host = f"127.0.0.{index % args.hosts + 1}"
        port, user_id, token = target(args, index)
        path = f"/ws/connect/{user_id}" + (f"?token={token}" if token else "")
        for attempt in range(args.attempts):
            request, accept = handshake(host, port, path)
            proto: RawSocket | None = None
            started = time.monotonic()

            def factory(r: bytes = request, a: bytes = accept, t: float = started) -> RawSocket:
                if args.mode == "storm":
                    return StormSocket(r, a, self.stats, t)
                if args.mode == "fanout":
                    number = args.first_id + index
                    silent = bool(args.silent_every) and number % args.silent_every == 0
                    return FanoutSocket(r, a, self.stats, user_id, port, silent, self.fanout_log)
                if args.mode == "timeout":
                    return TimeoutSocket(r, a, self.stats, user_id, port)
                return RawSocket(r, a, self.stats, args.mode == "pong")

            try:
                async with asyncio.timeout(args.connect_timeout):
                    _, proto = await loop.create_connection(
                        factory, host, port, local_addr=(host, 0) if args.bind_source else None
                    )
                    assert proto.ready is not None
                    await proto.ready
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.stats.last_error = repr(exc)[:200]
                if isinstance(proto, StormSocket):
                    self.tracked.append(proto)  # a failed storm socket is a result too
                if proto is not None:
                    proto.abort()
                if attempt + 1 < args.attempts:
                    self.stats.retries += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                self.stats.failed += 1
                return
            self.sockets.add(proto)
            if isinstance(proto, TimeoutSocket | StormSocket):
                self.tracked.append(proto)
            self.stats.open += 1
            self.stats.connected += 1
            if isinstance(proto, StormSocket):
                # Held until the first ping (or a refusal's close): ``ready`` then means every
                # socket's outcome is known.
                try:
                    async with asyncio.timeout(args.ping_wait):
                        await proto.settled
                except TimeoutError:
                    pass
            return

    def records(self) -> list[list[Any]]:
        return [sock.record() for sock in self.tracked]

    def freeze(self) -> float | None:
        """Stop answering pings; return the oldest 'last pong sent' time over open sockets."""
        stamps = []
        for sock in self.sockets:
            sock.pong = False
            if sock.last_pong:
                stamps.append(sock.last_pong)
        return min(stamps) if stamps else None

    async def close_all(self, timeout: float) -> None:
        if not self.sockets:
            return
        self.all_gone.clear()
        for sock in list(self.sockets):
            sock.close()
        try:
            await asyncio.wait_for(self.all_gone.wait(), timeout)
        except TimeoutError:
            for sock in list(self.sockets):
                sock.abort()
            await asyncio.sleep(0.2)


# --- websockets library ------------------------------------------------------------------------


class LibPool:
    def __init__(self, args: argparse.Namespace, stats: Stats) -> None:
        self.args = args
        self.stats = stats
        self.conns: dict[Any, asyncio.Task[None]] = {}
        self.last_pong: dict[Any, float] = {}
        self.stopping = False

    async def open_one(self, index: int) -> None:
        from websockets.asyncio.client import connect

        args = self.args
        host = f"127.0.0.{index % args.hosts + 1}"
        port, user_id, token = target(args, index)
        uri = f"ws://{host}:{port}/ws/connect/{user_id}" + (f"?token={token}" if token else "")
        for attempt in range(args.attempts):
            try:
                ws = await connect(
                    uri,
                    compression=None,
                    ping_interval=None,
                    max_queue=4,
                    open_timeout=args.connect_timeout,
                    close_timeout=5,
                    user_agent_header=None,
                )
            except Exception as exc:  # OSError, TimeoutError, InvalidHandshake and friends
                self.stats.last_error = repr(exc)[:200]
                if attempt + 1 < args.attempts:
                    self.stats.retries += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                self.stats.failed += 1
                return
            self.stats.open += 1
            self.stats.connected += 1
            self.conns[ws] = asyncio.create_task(self._read(ws))
            return

    async def _read(self, ws: Any) -> None:
        pong = self.args.mode == "pong"
        try:
            async for message in ws:
                if isinstance(message, str) and '"type":"ping"' in message[:32]:
                    self.stats.pings += 1
                    if pong and not self.stopping:
                        await ws.send(PONG_TEXT.decode())
                        self.last_pong[ws] = time.time()
                        self.stats.pongs_sent += 1
                else:
                    self.stats.other_frames += 1
        except Exception:
            pass
        finally:
            self.stats.open -= 1
            if not self.stopping:
                if ws.close_rcvd is not None:
                    self.stats.closed_by_server += 1
                else:
                    self.stats.lost += 1
            self.conns.pop(ws, None)

    def freeze(self) -> float | None:
        self.stopping = True
        stamps = [self.last_pong[ws] for ws in self.conns if ws in self.last_pong]
        return min(stamps) if stamps else None

    async def close_all(self, timeout: float) -> None:
        self.stopping = True
        conns = list(self.conns)
        sem = asyncio.Semaphore(500)

        async def close(ws: Any) -> None:
            async with sem:
                await ws.close()

        try:
            await asyncio.wait_for(
                asyncio.gather(*(close(ws) for ws in conns), return_exceptions=True), timeout
            )
        except TimeoutError:
            for ws in conns:
                ws.transport.abort()


# --- main ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    pool: RawPool | LibPool = RawPool(args, stats) if args.impl == "raw" else LibPool(args, stats)

    commands: asyncio.Queue[str] = asyncio.Queue()

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            commands.put_nowait("stop")
        else:
            commands.put_nowait(line.strip())

    loop.add_reader(sys.stdin.fileno(), on_stdin)

    started = time.monotonic()
    indices = iter(range(args.count))

    async def worker() -> None:
        for index in indices:
            await pool.open_one(index)

    async def progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            emit("progress", **stats.as_dict(), seconds=round(time.monotonic() - started, 2))

    async def storm() -> None:
        # Every socket at once, as independent clients would: each writes its upgrade request
        # as soon as its TCP connect completes. Starting all of them in one loop iteration
        # would instead leave thousands connected with nothing sent while this process works
        # through the rest of the connects (the gateway then sees silent connections); one
        # burst of connects per iteration lets the earlier ones send their requests meanwhile.
        opening = []
        for first in range(0, args.count, args.burst):
            for index in range(first, min(first + args.burst, args.count)):
                opening.append(asyncio.create_task(pool.open_one(index)))
            await asyncio.sleep(0)
        await asyncio.gather(*opening)

    reporter = asyncio.create_task(progress())
    if args.mode == "storm":
        await storm()
    else:
        await asyncio.gather(*(worker() for _ in range(min(args.concurrency, args.count))))
    reporter.cancel()
    emit("ready", **stats.as_dict(), seconds=round(time.monotonic() - started, 3))

    while True:
        command = await commands.get()
        if command == "stats":
            emit("stats", **stats.as_dict())
        elif command == "report":
            # [user_id, port, timeouts, first timeout at, close code, close at] per socket.
            records = pool.records() if isinstance(pool, RawPool) else []
            emit("report", **stats.as_dict(), sockets=records)
        elif command == "fanout":
            log = pool.fanout_log if isinstance(pool, RawPool) else FanoutLog()
            emit("fanout", sends=log.drain(), broadcasts=log.broadcasts)
        elif command == "stop":
            break
    oldest_last_pong = pool.freeze()
    closing = time.monotonic()
    await pool.close_all(args.close_timeout)
    emit(
        "stopped",
        **stats.as_dict(),
        close_seconds=round(time.monotonic() - closing, 3),
        oldest_last_pong=oldest_last_pong,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument(
        "--mode", choices=("idle", "pong", "timeout", "fanout", "storm"), default="idle"
    )
    parser.add_argument(
        "--plan",
        default=None,
        help="JSON list of [port, user_id] or [port, user_id, id_token], one per socket "
        "(instead of --port/--count/--prefix)",
    )
    parser.add_argument("--impl", choices=("raw", "websockets"), default="raw")
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--first-id", type=int, default=0)
    parser.add_argument("--hosts", type=int, default=50, help="loopback addresses 127.0.0.1..N")
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    parser.add_argument(
        "--bind-source",
        action="store_true",
        help="connect from the same loopback address as the one connected to, so the gateway "
        "sees --hosts client addresses (else every socket comes from 127.0.0.1)",
    )
    parser.add_argument("--connect-timeout", type=float, default=20.0)
    parser.add_argument("--close-timeout", type=float, default=15.0)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument(
        "--burst",
        type=int,
        default=100,
        help="storm mode: connects started per loop iteration (all of them, without waiting)",
    )
    parser.add_argument(
        "--ping-wait",
        type=float,
        default=120.0,
        help="storm mode: longest a socket waits for its first ping before ready",
    )
    parser.add_argument(
        "--silent-every",
        type=int,
        default=0,
        help="fanout mode: user numbers divisible by this never answer pings (0: none)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.hosts <= 254:
        parser.error("--hosts must be 1..254")
    args.plan_entries = None
    if args.plan:
        with open(args.plan) as fh:
            args.plan_entries = json.load(fh)
        args.count = len(args.plan_entries)
    elif not args.port or not args.count:
        parser.error("--port and --count are required without --plan")
    if args.mode in ("timeout", "fanout", "storm") and args.impl != "raw":
        parser.error(f"--mode {args.mode} needs --impl raw")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.count + 100 > hard:
        emit("error", message=f"{args.count} sockets need more than the fd limit {hard}")
        return 2
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
