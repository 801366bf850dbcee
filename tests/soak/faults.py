"""Carrying out the fault schedule against the stack, recording when each fault really began
and ended (a restart takes longer than the scheduled downtime: the invariants' allowances use
the real lengths)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from tests.soak import schedule as s
from tests.soak.schedule import Fault
from tests.soak.stack import Stack

log = logging.getLogger("soak")


@dataclass(slots=True)
class Injected:
    """A fault as it happened: scheduled ``fault``, real ``began`` and ``ended`` (seconds from
    the run's start), and what the harness noted (an instance id, cut connections)."""

    fault: Fault
    began: float
    ended: float | None = None
    note: str = ""

    def real(self) -> Fault:
        end = self.ended if self.ended is not None else self.began + self.fault.duration
        return Fault(self.began, self.fault.kind, round(end - self.began, 2), self.fault.target)


class Injector:
    def __init__(self, stack: Stack, clock: Callable[[], float], bad_token: str) -> None:
        self.stack = stack
        self.clock = clock
        self.bad_token = bad_token
        self.injected: list[Injected] = []
        #: Faults that would trip over each other wait for the one before them: a restart can
        #: outlast the schedule's margin, and a second kill must not hit a starting instance.
        self._locks: dict[str, asyncio.Lock] = {}

    async def run(self, faults: Sequence[Fault], start: float) -> None:
        """Inject each fault at its time (relative to ``start`` on the clock) and wait until
        every one is undone."""
        tasks = []
        for fault in faults:
            await asyncio.sleep(max(0.0, start + fault.at - self.clock()))
            tasks.append(asyncio.create_task(self._one(fault)))
        await asyncio.gather(*tasks)

    async def _one(self, fault: Fault) -> None:
        group = "instance" if fault.kind in s.INSTANCE_FAULTS else fault.kind
        async with self._locks.setdefault(group, asyncio.Lock()):
            record = Injected(fault, self.clock())
            self.injected.append(record)
            try:
                record.note = await self._inject(fault)
            except Exception as exc:  # noqa: BLE001 (a fault that failed is reported, not fatal)
                record.note = f"failed: {exc!r}"
                log.exception("fault %s failed", fault.describe())
            record.ended = self.clock()
        log.info("fault %s done (%s)", fault.describe(), record.note)

    async def _inject(self, fault: Fault) -> str:
        stack, kind = self.stack, fault.kind
        if kind == s.KILL_INSTANCE:
            gone = stack.kill_instance(fault.target)
            await asyncio.sleep(fault.duration)
            await stack.restart_instance(fault.target)
            return f"killed {gone}"
        if kind == s.DRAIN_INSTANCE:
            gone = await stack.drain_instance(fault.target)
            await asyncio.sleep(fault.duration)
            await stack.restart_instance(fault.target)
            return f"drained {gone}"
        if kind == s.STOP_FIRESTORE:
            stack.pause_firestore(True)
            try:
                await asyncio.sleep(fault.duration)
            finally:
                stack.pause_firestore(False)
            return "SIGSTOP/SIGCONT"
        if kind == s.THROTTLE_FIRESTORE:
            stack.throttle.rate = float(fault.target)
            try:
                await asyncio.sleep(fault.duration)
            finally:
                stack.throttle.rate = None
            return f"{fault.target} B/s"
        if kind == s.RESTART_PUBSUB:
            await stack.kill_pubsub()
            await asyncio.sleep(fault.duration)
            await stack.start_pubsub()
            return "killed, restarted empty"
        if kind == s.CUT_CLIENTS:
            return f"cut {stack.frontend.cut()} connections"
        if kind == s.KILL_SWEEP:
            await stack.kill_function()
            await asyncio.sleep(fault.duration)
            await stack.restart_function()
            return "killed mid-sweep"
        if kind == s.DUPLICATE_TRIGGERS:
            # Fired together with the scheduler's own; the sweeps run on without the injector.
            for _ in range(fault.target):
                stack.trigger()
            return f"{fault.target} extra triggers"
        if kind == s.BAD_INPUT:
            return await bad_input(stack, self.bad_token, fault.duration)
        raise ValueError(kind)


async def bad_input(stack: Stack, token: str, seconds: float) -> str:
    """A burst of bad input through the front end: sockets with bad tokens, a valid user's
    socket sending garbage, malformed REST calls, raw bytes that are not HTTP. Every socket is
    closed again; what the gateway answers is not checked here (the invariants are)."""
    url = stack.frontend.url
    ws = url.replace("http://", "ws://")
    sent = 0
    garbage: list[str | bytes] = [
        "not json",
        "{",
        json.dumps({"type": "no_such_type"}),
        json.dumps({"type": "join", "room": "bad room name!"}),
        json.dumps({"type": "stream_ack", "epoch": 7, "offset": -1}),
        json.dumps({"type": "message"}),
        b"\x00\xff" * 64,
        "x" * 200_000,
    ]
    for bad in ("garbage", "a.b.c", ""):
        with contextlib.suppress(WebSocketException, OSError, TimeoutError):
            async with asyncio.timeout(5), connect(f"{ws}/ws/connect/soak-bad?token={bad}") as sock:
                await sock.recv()
        sent += 1
    with contextlib.suppress(WebSocketException, OSError, TimeoutError):
        async with (
            asyncio.timeout(10),
            connect(f"{ws}/ws/connect/soak-bad-user?token={token}", max_size=None) as sock,
        ):
            for frame in garbage:
                await sock.send(frame)
                sent += 1
                await asyncio.sleep(seconds / len(garbage))
    admin = {"Authorization": f"Bearer {stack.admin_token}"}
    calls: list[tuple[str, str, dict[str, str], bytes]] = [
        ("POST", "/ws/send/soak-nobody", admin, b"{not json"),
        ("POST", "/ws/send", admin, b'{"messages": 7}'),
        ("POST", "/ws/rooms/bad%20room/send", admin, b"{}"),
        ("POST", "/internal/timeout", admin, b'{"sessions": "x"}'),
        ("POST", "/internal/timeout", {"Authorization": "Bearer wrong"}, b"{}"),
        ("GET", "/ws/stats?limit=-5", admin, b""),
    ]
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for method, path, headers, body in calls:
            with contextlib.suppress(httpx.HTTPError):
                await http.request(method, path, headers=headers, content=body)
            sent += 1
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.frontend.port)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()
            await reader.read(1024)
            writer.close()
        sent += 1
    return f"{sent} bad inputs"
